//! DNS messages as the resolver needs them: a confined client's query
//! checked and named, the upstream's answer matched to it, the addresses it
//! grants (following CNAME chains), and the resolver's own error replies.
//!
//! Why this exists: every byte here comes from a confined program or from
//! the network, so parsing is done by a maintained wire-format crate
//! (`simple-dns`), and this module decides only what may pass: one question
//! of class IN, a name made of host-name characters, an answer whose ID and
//! question are the ones sent.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use simple_dns::rdata::RData;
use simple_dns::{CLASS, Name, OPCODE, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE};

/// CNAME links followed before an answer's chain is cut off.
const MAX_CHAIN: usize = 16;

/// A query the resolver accepted to judge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Lower case, no trailing dot.
    pub name: String,
    pub qtype: u16,
}

impl Query {
    /// `A`, `AAAA`, `TYPE65`, ... for messages.
    pub fn type_name(&self) -> String {
        type_name(self.qtype)
    }
}

pub fn type_name(qtype: u16) -> String {
    match QTYPE::try_from(qtype) {
        Ok(QTYPE::TYPE(known)) => format!("{known:?}"),
        Ok(other) => format!("{other:?}"),
        Err(_) => format!("TYPE{qtype}"),
    }
}

/// Why a query is answered by the resolver itself, with this code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub rcode: RCODE,
}

/// The ID of a message, when it has a header.
pub fn message_id(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
}

/// The same message with another ID.
pub fn with_id(bytes: &[u8], id: u16) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if out.len() >= 2 {
        out[..2].copy_from_slice(&id.to_be_bytes());
    }
    out
}

/// A host name from DNS labels: lower case, dot-joined, every label made
/// of letters, digits, `-` and `_` (a label holding a dot or a control byte
/// would read as another name once joined). `None` otherwise.
fn host_name(name: &Name) -> Option<String> {
    let mut out = String::new();
    for label in name.as_bytes() {
        if label.is_empty()
            || !label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
    }
    (!out.is_empty()).then_some(out)
}

/// Checks a client's query: a standard query with exactly one question,
/// class IN, no records of its own besides EDNS, and a host name.
pub fn parse_query(bytes: &[u8]) -> Result<Query, Rejection> {
    let packet = Packet::parse(bytes).map_err(|_| Rejection {
        rcode: RCODE::FormatError,
    })?;
    if packet.has_flags(PacketFlag::RESPONSE) || packet.questions.len() != 1 {
        return Err(Rejection {
            rcode: RCODE::FormatError,
        });
    }
    if packet.opcode() != OPCODE::StandardQuery
        || !packet.answers.is_empty()
        || !packet.name_servers.is_empty()
    {
        return Err(Rejection {
            rcode: RCODE::NotImplemented,
        });
    }
    let question = &packet.questions[0];
    if question.qclass != QCLASS::CLASS(CLASS::IN) {
        return Err(Rejection {
            rcode: RCODE::Refused,
        });
    }
    let name = host_name(&question.qname).ok_or(Rejection {
        rcode: RCODE::Refused,
    })?;
    Ok(Query {
        id: packet.id(),
        name,
        qtype: question.qtype.into(),
    })
}

/// The resolver's own reply to `query_bytes` (which may not parse): the
/// query's ID and question, recursion available, and `rcode`.
pub fn reply(query_bytes: &[u8], rcode: RCODE) -> Option<Vec<u8>> {
    let id = message_id(query_bytes)?;
    let parsed = Packet::parse(query_bytes).ok();
    let mut packet = Packet::new_reply(id);
    packet.set_flags(PacketFlag::RECURSION_AVAILABLE);
    if let Some(query) = &parsed {
        if query.has_flags(PacketFlag::RECURSION_DESIRED) {
            packet.set_flags(PacketFlag::RECURSION_DESIRED);
        }
        if let [question] = query.questions.as_slice() {
            packet.questions.push(Question::new(
                question.qname.clone(),
                question.qtype,
                question.qclass,
                false,
            ));
        }
    }
    *packet.rcode_mut() = rcode;
    packet.build_bytes_vec().ok()
}

/// What an upstream answer grants: each address of the query name's CNAME
/// chain, with its record's TTL in seconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub addresses: Vec<(IpAddr, u32)>,
    /// The names of the chain after the query name (for the log).
    pub aliases: Vec<String>,
    pub truncated: bool,
}

/// Reads an upstream message as the answer to `query`: `None` when it is
/// not one (another ID, not a response, another question), which the
/// caller treats as never received.
pub fn parse_answer(bytes: &[u8], sent_id: u16, query: &Query) -> Option<Answer> {
    let packet = Packet::parse(bytes).ok()?;
    if packet.id() != sent_id || !packet.has_flags(PacketFlag::RESPONSE) {
        return None;
    }
    let [question] = packet.questions.as_slice() else {
        return None;
    };
    let qtype: u16 = question.qtype.into();
    if qtype != query.qtype || host_name(&question.qname).as_deref() != Some(&query.name) {
        return None;
    }
    let mut chain: Vec<String> = vec![query.name.clone()];
    // Follow CNAMEs in any order the records come in.
    for _ in 0..MAX_CHAIN {
        let next = packet
            .answers
            .iter()
            .find_map(|record| match &record.rdata {
                RData::CNAME(target) if record.class == CLASS::IN => {
                    let owner = host_name(&record.name)?;
                    let target = host_name(&target.0)?;
                    (chain.last() == Some(&owner) && !chain.contains(&target)).then_some(target)
                }
                _ => None,
            });
        match next {
            Some(target) => chain.push(target),
            None => break,
        }
    }
    let members: BTreeSet<&String> = chain.iter().collect();
    let addresses = packet
        .answers
        .iter()
        .filter(|record| record.class == CLASS::IN)
        .filter_map(|record| {
            let addr = match &record.rdata {
                RData::A(a) => IpAddr::V4(Ipv4Addr::from(a.address)),
                RData::AAAA(aaaa) => IpAddr::V6(Ipv6Addr::from(aaaa.address)),
                _ => return None,
            };
            let owner = host_name(&record.name)?;
            members.contains(&owner).then_some((addr, record.ttl))
        })
        .collect();
    Some(Answer {
        addresses,
        aliases: chain.into_iter().skip(1).collect(),
        truncated: packet.has_flags(PacketFlag::TRUNCATION),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use simple_dns::rdata::{A, AAAA, CNAME};
    use simple_dns::{ResourceRecord, TYPE};

    fn query_bytes(id: u16, name: &str, qtype: TYPE) -> Vec<u8> {
        let mut packet = Packet::new_query(id);
        packet.set_flags(PacketFlag::RECURSION_DESIRED);
        packet.questions.push(Question::new(
            Name::new_unchecked(name),
            qtype.into(),
            CLASS::IN.into(),
            false,
        ));
        packet.build_bytes_vec().unwrap()
    }

    fn answer_bytes(id: u16, name: &str, records: Vec<ResourceRecord<'static>>) -> Vec<u8> {
        let mut packet = Packet::new_reply(id);
        packet.questions.push(Question::new(
            Name::new_unchecked(name),
            TYPE::A.into(),
            CLASS::IN.into(),
            false,
        ));
        packet.answers = records;
        packet.build_bytes_vec().unwrap()
    }

    fn a(owner: &'static str, addr: [u8; 4], ttl: u32) -> ResourceRecord<'static> {
        ResourceRecord::new(
            Name::new_unchecked(owner),
            CLASS::IN,
            ttl,
            RData::A(A {
                address: u32::from(Ipv4Addr::from(addr)),
            }),
        )
    }

    fn cname(owner: &'static str, target: &'static str) -> ResourceRecord<'static> {
        ResourceRecord::new(
            Name::new_unchecked(owner),
            CLASS::IN,
            60,
            RData::CNAME(CNAME(Name::new_unchecked(target))),
        )
    }

    #[test]
    fn queries_are_named_in_lower_case() {
        let query = parse_query(&query_bytes(7, "API.Svc.Test.", TYPE::AAAA)).unwrap();
        assert_eq!(query.name, "api.svc.test");
        assert_eq!(query.type_name(), "AAAA");
        assert_eq!(query.id, 7);
    }

    #[test]
    fn odd_queries_are_rejected_with_a_code() {
        let mut response = Packet::new_reply(1);
        response.questions.push(Question::new(
            Name::new_unchecked("a.test"),
            TYPE::A.into(),
            CLASS::IN.into(),
            false,
        ));
        let response = response.build_bytes_vec().unwrap();
        assert_eq!(
            parse_query(&response).unwrap_err().rcode,
            RCODE::FormatError
        );
        assert_eq!(
            parse_query(b"\x00\x01").unwrap_err().rcode,
            RCODE::FormatError
        );
        // A label with a dot in it would read as `api.svc.test` once joined.
        let mut dotted = Packet::new_query(3);
        dotted.questions.push(Question::new(
            Name::new_with_labels(&[
                simple_dns::Label::new_unchecked(&b"api.svc"[..]),
                simple_dns::Label::new_unchecked(&b"test"[..]),
            ]),
            TYPE::A.into(),
            CLASS::IN.into(),
            false,
        ));
        let dotted = dotted.build_bytes_vec().unwrap();
        assert_eq!(parse_query(&dotted).unwrap_err().rcode, RCODE::Refused);
        let refused = reply(&dotted, RCODE::Refused).unwrap();
        let refused = Packet::parse(&refused).unwrap();
        assert_eq!(refused.id(), 3);
        assert_eq!(refused.rcode(), RCODE::Refused);
        assert_eq!(refused.questions.len(), 1);
    }

    #[test]
    fn answers_follow_the_cname_chain_and_ignore_the_rest() {
        let query = parse_query(&query_bytes(9, "api.svc.test", TYPE::A)).unwrap();
        let bytes = answer_bytes(
            40,
            "api.svc.test",
            vec![
                a("elsewhere.test", [198, 18, 9, 9], 60),
                a("edge.cdn.test", [198, 18, 0, 2], 30),
                cname("mid.test", "edge.cdn.test"),
                cname("api.svc.test", "mid.test"),
            ],
        );
        assert_eq!(parse_answer(&bytes, 41, &query), None, "another ID");
        let answer = parse_answer(&bytes, 40, &query).unwrap();
        assert_eq!(
            answer.addresses,
            vec![("198.18.0.2".parse().unwrap(), 30)],
            "only the chain's addresses"
        );
        assert_eq!(answer.aliases, ["mid.test", "edge.cdn.test"]);
        let other = parse_query(&query_bytes(9, "other.test", TYPE::A)).unwrap();
        assert_eq!(parse_answer(&bytes, 40, &other), None, "another question");
    }

    #[test]
    fn cname_loops_end() {
        let query = parse_query(&query_bytes(1, "a.test", TYPE::A)).unwrap();
        let bytes = answer_bytes(
            1,
            "a.test",
            vec![cname("a.test", "b.test"), cname("b.test", "a.test")],
        );
        let answer = parse_answer(&bytes, 1, &query).unwrap();
        assert!(answer.addresses.is_empty());
        assert_eq!(answer.aliases, ["b.test"]);
        let v6 = ResourceRecord::new(
            Name::new_unchecked("a.test"),
            CLASS::IN,
            5,
            RData::AAAA(AAAA {
                address: u128::from("2001:db8::5".parse::<Ipv6Addr>().unwrap()),
            }),
        );
        let bytes = answer_bytes(1, "a.test", vec![v6]);
        assert_eq!(
            parse_answer(&bytes, 1, &query).unwrap().addresses,
            vec![("2001:db8::5".parse().unwrap(), 5)]
        );
    }
}
