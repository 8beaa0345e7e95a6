/* Escape attempts for the kernel tests: each mode tries one way out of the
 * confinement (or helps another process try) and prints what happened, so the test can tell an escape
 * (the call worked and the process lived) from enforcement (the process was
 * killed, or the call failed with EPERM).
 *
 * Why C: io_uring, clone3 and pidfd_getfd have no Python bindings, and the
 * futex storm needs fork/wake timing without an interpreter in between.
 * Built by the tests with `cc ... -luring -lpthread`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/futex.h>
#include <linux/sched.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void wait_for_file(const char *path)
{
	while (access(path, F_OK) != 0)
		usleep(1000);
}

/* Creates a short-lived thread and a short-lived child every 0.7 ms, so a
 * `confine` of this process lands while tasks are being created. */
static void *churn(void *unused)
{
	(void)unused;
	for (;;) {
		pthread_t t;
		if (pthread_create(&t, NULL, (void *(*)(void *))pthread_exit, NULL) == 0)
			pthread_detach(t);
		pid_t child = fork();
		if (child == 0)
			_exit(0);
		if (child > 0)
			waitpid(child, NULL, 0);
		usleep(700);
	}
	return NULL;
}

/* storm ROUNDS CHILDREN [GO_FILE]: each round forks CHILDREN children that
 * block on one futex, wakes them at once, and each makes one syscall the
 * policy denies (personality). With GO_FILE, churns tasks until that file
 * exists (the test confines this process meanwhile), then storms. */
static int storm(int argc, char **argv)
{
	int rounds = atoi(argv[2]), children = atoi(argv[3]);
	if (argc > 4) {
		pthread_t t;
		pthread_create(&t, NULL, churn, NULL);
		wait_for_file(argv[4]);
	}
	_Atomic int *word = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	pid_t *pids = calloc(children, sizeof(pid_t));
	long survivors = 0, killed = 0, other = 0;
	for (int r = 0; r < rounds; r++) {
		atomic_store(word, 0);
		for (int i = 0; i < children; i++) {
			pid_t p = fork();
			if (p == 0) {
				while (atomic_load(word) == 0)
					syscall(SYS_futex, word, FUTEX_WAIT, 0, 0, 0, 0);
				syscall(SYS_personality, 0xffffffffUL);
				_exit(0);
			}
			pids[i] = p;
		}
		usleep(2000);
		atomic_store(word, 1);
		syscall(SYS_futex, word, FUTEX_WAKE, 1 << 30, 0, 0, 0);
		for (int i = 0; i < children; i++) {
			int status;
			if (pids[i] <= 0 || waitpid(pids[i], &status, 0) < 0)
				other++;
			else if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
				survivors++;
			else if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
				killed++;
			else
				other++;
		}
	}
	printf("survivors %ld killed %ld other %ld\n", survivors, killed, other);
	fflush(stdout);
	_exit(0);
}

static struct io_uring ring;
static int ring_sqpoll;

static void ring_setup(int sqpoll)
{
	struct io_uring_params params;
	memset(&params, 0, sizeof(params));
	if (sqpoll) {
		params.flags = IORING_SETUP_SQPOLL;
		params.sq_thread_idle = 60000;
	}
	ring_sqpoll = sqpoll;
	int rc = io_uring_queue_init_params(8, &ring, &params);
	if (rc) {
		printf("io_uring_setup %s\n", strerror(-rc));
		exit(2);
	}
}

/* Submits and waits for one completion. With SQPOLL no syscall is made at
 * all: the SQ thread (awake for 60 s) picks the request up, and the
 * completion is polled from the shared ring. */
static int ring_run(void)
{
	struct io_uring_cqe *cqe = NULL;
	io_uring_submit(&ring);
	if (ring_sqpoll) {
		for (int i = 0; i < 5000000 && io_uring_peek_cqe(&ring, &cqe) != 0; i++)
			;
		if (!cqe)
			return -ETIMEDOUT;
	} else if (io_uring_wait_cqe(&ring, &cqe)) {
		return -EIO;
	}
	int res = cqe->res;
	io_uring_cqe_seen(&ring, cqe);
	return res;
}

/* uring-unlink sqpoll|plain PATH READY GO: sets up a ring, says READY, and
 * once GO exists asks the ring to unlink PATH. */
static int uring_unlink(char **argv)
{
	ring_setup(!strcmp(argv[2], "sqpoll"));
	close(open(argv[4], O_CREAT | O_WRONLY, 0644));
	wait_for_file(argv[5]);
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	io_uring_prep_unlinkat(sqe, AT_FDCWD, argv[3], 0);
	printf("unlinkat %d\n", ring_run());
	return 0;
}

/* uring-connect sqpoll|async ADDRESS PORT: connects a TCP socket through the
 * ring (by the SQPOLL thread, or by an io-wq worker with IOSQE_ASYNC). */
static int uring_connect(char **argv)
{
	int sqpoll = !strcmp(argv[2], "sqpoll");
	ring_setup(sqpoll);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[4])) };
	inet_pton(AF_INET, argv[3], &to.sin_addr);
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	io_uring_prep_connect(sqe, fd, (struct sockaddr *)&to, sizeof(to));
	if (!sqpoll)
		sqe->flags |= IOSQE_ASYNC;
	int res = ring_run();
	printf("connect %s\n", res == 0 ? "OK" : strerror(-res));
	return 0;
}

/* uring-exit: an SQPOLL ring with a busy worker, then exit_group, so that
 * an io thread is often the last thread of the process to exit. */
static int uring_exit(void)
{
	ring_setup(1);
	int pipes[2];
	pipe(pipes);
	char buffer[8];
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	io_uring_prep_read(sqe, pipes[0], buffer, sizeof(buffer), 0);
	sqe->flags |= IOSQE_ASYNC;
	io_uring_submit(&ring);
	usleep(20000);
	printf("exiting\n");
	fflush(stdout);
	_exit(0);
}

/* clone3-ns: a child in new user and PID namespaces. */
static int clone3_ns(void)
{
	struct clone_args args;
	memset(&args, 0, sizeof(args));
	args.flags = CLONE_NEWUSER | CLONE_NEWPID;
	args.exit_signal = SIGCHLD;
	long child = syscall(SYS_clone3, &args, sizeof(args));
	if (child == 0)
		_exit(0);
	if (child < 0) {
		printf("clone3 %s\n", strerror(errno));
		return 0;
	}
	int status;
	waitpid(child, &status, 0);
	printf("clone3 child %ld status %d\n", child, status);
	return 0;
}

/* procmem PID ADDRESS: overwrites one byte of PID's memory at ADDRESS. */
static int procmem(char **argv)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%s/mem", argv[2]);
	int fd = open(path, O_RDWR);
	if (fd < 0) {
		printf("open %s\n", strerror(errno));
		return 0;
	}
	char byte = 'X';
	ssize_t n = pwrite(fd, &byte, 1, strtoull(argv[3], 0, 0));
	printf("pwrite %zd\n", n);
	return 0;
}

/* pidfd-getfd PID FD: takes PID's descriptor FD. */
static int pidfd_getfd(char **argv)
{
	int pidfd = syscall(SYS_pidfd_open, atoi(argv[2]), 0);
	int fd = syscall(SYS_pidfd_getfd, pidfd, atoi(argv[3]), 0);
	printf("pidfd_getfd %s\n", fd >= 0 ? "OK" : strerror(errno));
	return 0;
}

/* share-files: a child that shares this process's descriptors
 * (CLONE_FILES without CLONE_THREAD) makes a denied call that creates one;
 * the child dies for it, but the descriptor would stay with the parent. */
static int share_files(void)
{
	long child = syscall(SYS_clone, CLONE_FILES | SIGCHLD, 0, 0, 0, 0);
	if (child == 0) {
		socket(AF_PACKET, SOCK_RAW, 0);
		_exit(0);
	}
	int status = 0;
	waitpid(child, &status, 0);
	int usable = fcntl(3, F_GETFD) >= 0 || fcntl(4, F_GETFD) >= 0;
	printf("child status %d, parent holds its descriptor: %s\n", status, usable ? "yes" : "no");
	return 0;
}

/* vfork-deny: a vfork child (shares memory until it execs) makes a denied
 * call and dies; the parent then carries on. */
static int vfork_deny(void)
{
	pid_t child = vfork();
	if (child == 0) {
		syscall(SYS_personality, 0xffffffffUL);
		_exit(0);
	}
	int status = 0;
	waitpid(child, &status, 0);
	printf("parent after vfork child status %d\n", status);
	return 0;
}

/* uring-openat PATH: opens PATH read-write through a ring (no syscall of
 * the open's own), then writes through the fd. */
static int uring_openat(char **argv)
{
	ring_setup(0);
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	io_uring_prep_openat(sqe, AT_FDCWD, argv[2], O_RDWR, 0);
	int fd = ring_run();
	printf("openat %d\n", fd);
	return 0;
}

/* uring-socket FAMILY TYPE: creates a socket through a ring. */
static int uring_socket(char **argv)
{
	ring_setup(0);
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	io_uring_prep_socket(sqe, atoi(argv[2]), atoi(argv[3]), 0, 0);
	int fd = ring_run();
	printf("socket %s\n", fd >= 0 ? "OK" : strerror(-fd));
	return 0;
}

/* uring-socket-direct: a socket made straight into a direct descriptor. */
static int uring_socket_direct(void)
{
	ring_setup(0);
	int files[1] = { -1 };
	io_uring_register_files(&ring, files, 1);
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	io_uring_prep_socket_direct(sqe, AF_INET, SOCK_DGRAM, 0, 0, 0);
	int res = ring_run();
	printf("socket direct %d\n", res);
	return 0;
}

/* unlink-cold PATH: unlinks PATH with the name in a page of a file
 * mapping that was never touched, so it cannot be read without a fault. */
static int unlink_cold(char **argv)
{
	char template[] = "/tmp/escape-cold-XXXXXX";
	int fd = mkstemp(template);
	if (fd < 0 || write(fd, argv[2], strlen(argv[2]) + 1) < 0)
		return 2;
	const char *name = mmap(0, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
	unlink(template);
	if (name == MAP_FAILED)
		return 2;
	printf("unlink %d\n", unlink(name));
	return 0;
}

/* packet-socket: an AF_PACKET socket (sends frames past every IP hook). */
static int packet_socket(void)
{
	int fd = socket(AF_PACKET, SOCK_RAW, 0);
	printf("packet socket %s\n", fd >= 0 ? "OK" : strerror(errno));
	return 0;
}

/* relay N: N chains of short-lived threads; each thread starts the next
 * and exits, so the thread list never holds still. A thread created by an
 * unmarked thread is unmarked: if confine misses one link, the whole chain
 * after it runs free. */
static void *relay_link(void *arg)
{
	pthread_t next;
	usleep(200);
	while (pthread_create(&next, NULL, relay_link, arg))
		usleep(100);
	pthread_detach(next);
	return NULL;
}

static int relay(char **argv)
{
	int chains = atoi(argv[2]);
	for (int i = 0; i < chains; i++) {
		pthread_t first;
		if (pthread_create(&first, NULL, relay_link, NULL))
			return 1;
		pthread_detach(first);
	}
	printf("relaying\n");
	for (;;)
		pause();
}

/* cont PID: continue PID as fast as possible, as a confined process's
 * accomplice would while the daemon holds it stopped. */
static int cont(char **argv)
{
	pid_t pid = atoi(argv[2]);
	for (;;) {
		if (kill(pid, SIGCONT))
			return 0;
		usleep(50);
	}
}

/* forker N: N threads, each forking a child every 300 us (the child
 * sleeps 3 s); children that exit are reaped. A child made by a thread not
 * marked yet would be an unconfined process. */
static void *fork_loop(void *arg)
{
	(void)arg;
	for (;;) {
		pid_t child = fork();
		if (child == 0) {
			sleep(3);
			_exit(0);
		}
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		usleep(300);
	}
	return NULL;
}

static int forker(char **argv)
{
	int threads = atoi(argv[2]);
	for (int i = 0; i < threads; i++) {
		pthread_t thread;
		if (pthread_create(&thread, NULL, fork_loop, NULL))
			return 1;
	}
	printf("forking\n");
	for (;;)
		pause();
}

/* exec-on FILE: a second thread waits for FILE to exist, then execs this
 * helper as `forker 2` (the exec makes that thread the process's leader,
 * with the leader's PID). Run while a confine is under way, the new image
 * must be as confined as the process was. */
static const char *exec_trigger;

static void *exec_when_triggered(void *arg)
{
	(void)arg;
	while (access(exec_trigger, F_OK))
		usleep(100);
	char *args[] = { "escape", "forker", "2", NULL };
	execv("/proc/self/exe", args);
	_exit(126);
}

static int exec_on(char **argv)
{
	pthread_t thread;
	exec_trigger = argv[2];
	if (pthread_create(&thread, NULL, exec_when_triggered, NULL))
		return 1;
	for (;;)
		pause();
}

/* zombie-leader: the main thread exits alone (SYS_exit), leaving the
 * process to two forking threads: `ps` shows it as a zombie, yet it runs. */
static int zombie_leader(void)
{
	for (int i = 0; i < 2; i++) {
		pthread_t thread;
		if (pthread_create(&thread, NULL, fork_loop, NULL))
			return 1;
	}
	syscall(SYS_exit, 0);
	return 0;
}

/* pid-at PID: starts `sleep 60` with exactly PID (clone3 set_tid, root
 * only), to reuse the number of a process that just exited; prints
 * "started PID" or why not. */
static int pid_at(char **argv)
{
	pid_t want = atoi(argv[2]);
	struct clone_args args = {
		.exit_signal = SIGCHLD,
		.set_tid = (uint64_t)(uintptr_t)&want,
		.set_tid_size = 1,
	};
	long child = syscall(SYS_clone3, &args, sizeof(args));
	if (child == 0) {
		/* Not the caller's pipe: it would wait for sleep to end. */
		int devnull = open("/dev/null", O_WRONLY);
		dup2(devnull, 1);
		dup2(devnull, 2);
		execlp("sleep", "sleep", "60", (char *)NULL);
		_exit(127);
	}
	if (child < 0) {
		printf("clone3 set_tid %d: %s\n", want, strerror(errno));
		return 1;
	}
	printf("started %ld\n", child);
	return 0;
}

/* The name link() reads, and when to blank it: a sibling thread rewrites
 * the name after the kernel has copied it, before the probe reads it back
 * at syscall exit. */
static char race_name[4096];
static atomic_int race_go;
static long race_delay_ns;

static long now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void *blank_name(void *unused)
{
	(void)unused;
	while (!atomic_load(&race_go))
		;
	long start = now_ns();
	while (now_ns() < start + race_delay_ns)
		;
	race_name[0] = 0;
	return NULL;
}

/* name-race SRC DST TRIES: per try, a child links SRC (padded with "/."
 * components so the kernel's walk takes a while) to DST while a sibling
 * thread blanks the name 0-40 us into the call; a child whose link worked
 * and that lives prints what it read through DST. Prints "escaped N killed
 * M failed K". */
static int name_race(char **argv)
{
	int tries = atoi(argv[4]), escaped = 0, killed = 0, failed = 0;
	for (int i = 0; i < tries; i++) {
		unlink(argv[3]);
		pid_t child = fork();
		if (child == 0) {
			const char *slash = strrchr(argv[2], '/');
			int dir = (int)(slash - argv[2]);
			char padded[4096];
			snprintf(padded, sizeof(padded), "%.*s", dir, argv[2]);
			while (strlen(padded) + strlen(slash) + 3 < 4000)
				strcat(padded, "/.");
			strcat(padded, slash);
			memcpy(race_name, padded, strlen(padded) + 1);
			race_delay_ns = (i % 41) * 1000L;
			pthread_t t;
			pthread_create(&t, NULL, blank_name, NULL);
			atomic_store(&race_go, 1);
			long rc = syscall(SYS_link, race_name, argv[3]);
			pthread_join(t, NULL);
			if (rc != 0)
				_exit(1);
			char content[256] = {0};
			int fd = open(argv[3], O_RDONLY);
			if (fd < 0 || read(fd, content, sizeof(content) - 1) < 0)
				_exit(1);
			printf("escaped: %s", content);
			fflush(stdout);
			_exit(0);
		}
		int status = 0;
		waitpid(child, &status, 0);
		if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
			killed++;
		else if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
			escaped++;
		else
			failed++;
	}
	unlink(argv[3]);
	printf("escaped %d killed %d failed %d\n", escaped, killed, failed);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	if (argc < 2)
		return 2;
	const char *mode = argv[1];
	if (!strcmp(mode, "name-race") && argc == 5)
		return name_race(argv);
	if (!strcmp(mode, "zombie-leader"))
		return zombie_leader();
	if (!strcmp(mode, "exec-on") && argc == 3)
		return exec_on(argv);
	if (!strcmp(mode, "forker") && argc == 3)
		return forker(argv);
	if (!strcmp(mode, "pid-at") && argc == 3)
		return pid_at(argv);
	if (!strcmp(mode, "relay") && argc == 3)
		return relay(argv);
	if (!strcmp(mode, "cont") && argc == 3)
		return cont(argv);
	if (!strcmp(mode, "storm") && argc >= 4)
		return storm(argc, argv);
	if (!strcmp(mode, "uring-unlink") && argc == 6)
		return uring_unlink(argv);
	if (!strcmp(mode, "uring-connect") && argc == 5)
		return uring_connect(argv);
	if (!strcmp(mode, "uring-exit"))
		return uring_exit();
	if (!strcmp(mode, "clone3-ns"))
		return clone3_ns();
	if (!strcmp(mode, "procmem") && argc == 4)
		return procmem(argv);
	if (!strcmp(mode, "pidfd-getfd") && argc == 4)
		return pidfd_getfd(argv);
	if (!strcmp(mode, "packet-socket"))
		return packet_socket();
	if (!strcmp(mode, "share-files"))
		return share_files();
	if (!strcmp(mode, "vfork-deny"))
		return vfork_deny();
	if (!strcmp(mode, "uring-openat") && argc == 3)
		return uring_openat(argv);
	if (!strcmp(mode, "uring-socket") && argc == 4)
		return uring_socket(argv);
	if (!strcmp(mode, "uring-socket-direct"))
		return uring_socket_direct();
	if (!strcmp(mode, "unlink-cold") && argc == 3)
		return unlink_cold(argv);
	fprintf(stderr, "unknown mode or arguments\n");
	return 2;
}
