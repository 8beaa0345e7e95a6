//! Finds an explicit YAML tag (`!!str`, `!custom`) in a policy's text.
//!
//! Why this exists: upstream's validator reads tags one way in the flat
//! form (serde_yaml's streaming deserializer mostly ignores them) and
//! another in the envelope form (its `Value` honours them), so `allow:
//! !!str true` is refused by one and accepted by the other. No policy
//! needs a tag, so a file with one is refused outright rather than read
//! either way. serde_yaml does not show tags to a deserializer, hence this
//! scan of the text: a `!` where a YAML node may start, outside quotes,
//! comments and block scalars, is a tag.

/// The byte offset of the first explicit tag, if any.
pub fn first_tag(text: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    // Indentation of the line that opened a block scalar (`|`, `>`).
    let mut block_parent: Option<usize> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let line_start = offset;
        offset += line.len();
        let indent = line.len() - line.trim_start_matches(' ').len();
        if let Some(parent) = block_parent {
            if line.trim().is_empty() || indent > parent {
                continue;
            }
            block_parent = None;
        }
        let mut node_start = quote.is_none();
        let mut chars = line.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            if let Some(open) = quote {
                match c {
                    '\\' if open == '"' => {
                        chars.next();
                    }
                    '\'' if open == '\'' && chars.peek().is_some_and(|&(_, n)| n == '\'') => {
                        chars.next();
                    }
                    c if c == open => quote = None,
                    _ => {}
                }
                continue;
            }
            let next_is_blank = chars.peek().is_none_or(|&(_, n)| n.is_whitespace());
            match c {
                ' ' | '\t' | '\r' | '\n' => {}
                '#' if at == 0 || line[..at].ends_with([' ', '\t']) => break,
                '!' if node_start => return Some(line_start + at),
                '"' | '\'' if node_start => {
                    quote = Some(c);
                    node_start = false;
                }
                '|' | '>' if node_start => {
                    block_parent = Some(indent);
                    break;
                }
                '&' | '*' if node_start => {
                    // An anchor or alias name; a tag may follow an anchor.
                    while chars.peek().is_some_and(|&(_, n)| !n.is_whitespace()) {
                        chars.next();
                    }
                }
                '[' | '{' | ',' => node_start = true,
                ':' | '-' | '?' if next_is_blank => node_start = true,
                _ => node_start = false,
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::first_tag;

    #[test]
    fn tags_are_found_where_a_node_starts() {
        for (text, at) in [
            ("a: !!str true\n", 3),
            ("a: [x, !custom 5]\n", 7),
            ("- !x\n", 2),
            ("a: &anchor !!int 5\n", 11),
            ("!!map\na: 1\n", 0),
            ("a:\n  b: !x\n", 8),
        ] {
            assert_eq!(first_tag(text), Some(at), "{text:?}");
        }
    }

    #[test]
    fn a_bang_that_is_not_a_tag_is_left_alone() {
        for text in [
            "a: Hello! world\n",
            "a: \"!quoted\"\n",
            "a: '!single ''!'' x'\n",
            "a: x # !comment\n",
            "a: |\n  !block\n  text!\nb: 1\n",
            "a: >-\n  !folded\n",
            "a: \"multi\n  !line\"\n",
            "a: it's !fine\n",
            "a: b!c\n",
        ] {
            assert_eq!(first_tag(text), None, "{text:?}");
        }
    }
}
