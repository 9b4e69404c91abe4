/* Escape attempts run inside a container by tests/integration/test_security.py.
 *
 * Usage: escape GROUP [ARGS] [GROUP [ARGS]]...; every attempt prints a line
 *     NAME RETURN ERRNO-NAME [DETAIL...]
 * (ERRNO-NAME is "-" when the call succeeded). Attempts that may kill the
 * caller, or change its credentials or namespaces for good, run in a forked
 * child; the parent then prints NAME_status exit CODE | signal SIGNAME.
 *
 * Every argument is chosen so that a permitted call does nothing lasting:
 * bogus module images, kexec with bad flags, reboot with a bad magic, a tmpfs
 * mounted over /tmp inside the container's own mount namespace.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/bpf.h>
#include <linux/filter.h>
#include <linux/io_uring.h>
#include <linux/perf_event.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#define KEYCTL_GET_KEYRING_ID 0
#define KEY_SPEC_PROCESS_KEYRING (-2)
#define KEY_SPEC_SESSION_KEYRING (-3)
#define X32_SYSCALL_BIT 0x40000000L
#define I386_GETPID 20
#define I386_KEYCTL 288

static void report(const char *name, long r, const char *detail) {
    /* errno is read before printf can change it */
    const char *err = r < 0 ? strerrorname_np(errno) : "-";
    printf("%s %ld %s%s%s\n", name, r, err ? err : "?", detail ? " " : "", detail ? detail : "");
    fflush(stdout);
}

static long sys(long nr, long a0, long a1, long a2, long a3, long a4, long a5) {
    errno = 0;
    return syscall(nr, a0, a1, a2, a3, a4, a5);
}

static void close_if_fd(long r) {
    if (r >= 0)
        close((int)r);
}

/* A child made by a raw clone/clone3 returns 0 here: leave at once. */
static void reap_clone(const char *name, long r) {
    if (r == 0)
        _exit(0);
    report(name, r, NULL);
    if (r > 0)
        waitpid((pid_t)r, NULL, __WALL);
}

static void status_line(const char *name, int status) {
    if (WIFSIGNALED(status))
        printf("%s_status signal SIG%s\n", name, sigabbrev_np(WTERMSIG(status)));
    else
        printf("%s_status exit %d\n", name, WEXITSTATUS(status));
    fflush(stdout);
}

/* --- denied: calls the profile refuses, with arguments a permitted call
 * would reject only after its permission check (or harmless if it succeeds) */
static void denied(void) {
    long r;

    struct io_uring_params up;
    memset(&up, 0, sizeof up);
    r = sys(SYS_io_uring_setup, 1, (long)&up, 0, 0, 0, 0);
    report("io_uring_setup", r, NULL);
    close_if_fd(r);

    union bpf_attr ba;
    memset(&ba, 0, sizeof ba);
    ba.map_type = BPF_MAP_TYPE_ARRAY;
    ba.key_size = 4;
    ba.value_size = 4;
    ba.max_entries = 1;
    r = sys(SYS_bpf, BPF_MAP_CREATE, (long)&ba, sizeof ba, 0, 0, 0);
    report("bpf", r, NULL);
    close_if_fd(r);

    r = sys(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY, 0, 0, 0, 0, 0);
    report("userfaultfd", r, NULL);
    close_if_fd(r);

    r = sys(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0, 0, 0, 0);
    report("keyctl", r, NULL);

    /* no such key type: ENODEV once the keyring was looked up */
    r = sys(SYS_add_key, (long)"pst_no_such_type", (long)"d", 0, 0, KEY_SPEC_PROCESS_KEYRING, 0);
    report("add_key", r, NULL);

    r = sys(SYS_mount, (long)"pst", (long)"/tmp", (long)"tmpfs", 0, (long)"size=64k", 0);
    report("mount", r, NULL);
    r = sys(SYS_umount2, (long)"/tmp", MNT_DETACH, 0, 0, 0, 0);
    report("umount2", r, NULL);

    r = sys(SYS_fsopen, (long)"tmpfs", FSOPEN_CLOEXEC, 0, 0, 0, 0);
    report("fsopen", r, NULL);
    close_if_fd(r);

    /* handle_bytes 0: EINVAL, checked right after the capability */
    struct file_handle fh;
    memset(&fh, 0, sizeof fh);
    r = sys(SYS_open_by_handle_at, AT_FDCWD, (long)&fh, O_RDONLY, 0, 0, 0);
    report("open_by_handle_at", r, NULL);
    close_if_fd(r);

    int mount_id = 0;
    memset(&fh, 0, sizeof fh);
    r = sys(SYS_name_to_handle_at, AT_FDCWD, (long)"/", (long)&fh, (long)&mount_id, 0, 0);
    report("name_to_handle_at", r, NULL);

    /* too many segments and an unknown architecture: EINVAL */
    r = sys(SYS_kexec_load, 0, 1000, 0, 0xdead0000L, 0, 0);
    report("kexec_load", r, NULL);
    r = sys(SYS_kexec_file_load, -1, -1, 0, 0, 0xdead, 0);
    report("kexec_file_load", r, NULL);

    static const char junk[16] = "not an ELF image";
    r = sys(SYS_init_module, (long)junk, sizeof junk, (long)"", 0, 0, 0);
    report("init_module", r, NULL);
    r = sys(SYS_finit_module, -1, (long)"", 0xdead, 0, 0, 0);
    report("finit_module", r, NULL);
    r = sys(SYS_delete_module, (long)"pst_no_such_module", O_NONBLOCK, 0, 0, 0, 0);
    report("delete_module", r, NULL);

    struct perf_event_attr pa;
    memset(&pa, 0, sizeof pa);
    pa.type = PERF_TYPE_SOFTWARE;
    pa.size = sizeof pa;
    pa.config = PERF_COUNT_SW_TASK_CLOCK;
    pa.disabled = 1;
    pa.exclude_kernel = 1;
    pa.exclude_hv = 1;
    r = sys(SYS_perf_event_open, (long)&pa, 0, -1, -1, PERF_FLAG_FD_CLOEXEC, 0);
    report("perf_event_open", r, NULL);
    close_if_fd(r);

    /* joining the namespace the caller is already in */
    int nsfd = open("/proc/self/ns/uts", O_RDONLY | O_CLOEXEC);
    r = sys(SYS_setns, nsfd, CLONE_NEWUTS, 0, 0, 0, 0);
    report("setns", r, NULL);
    if (nsfd >= 0)
        close(nsfd);

    r = sys(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0, 0);
    reap_clone("clone_newuser", r);
    r = sys(SYS_clone, CLONE_NEWNS | SIGCHLD, 0, 0, 0, 0, 0);
    reap_clone("clone_newns", r);

    struct clone_args ca;
    memset(&ca, 0, sizeof ca);
    ca.flags = CLONE_NEWUSER;
    ca.exit_signal = SIGCHLD;
    r = sys(SYS_clone3, (long)&ca, sizeof ca, 0, 0, 0, 0);
    reap_clone("clone3", r);

    r = sys(SYS_reboot, 0xdeadbeefL, 0, 0, 0, 0, 0); /* bad magic: EINVAL */
    report("reboot", r, NULL);

    r = sys(SYS_syslog, 10 /* SYSLOG_ACTION_SIZE_BUFFER */, 0, 0, 0, 0, 0);
    report("syslog", r, NULL);

    struct utsname u;
    r = uname(&u) == 0 ? 0 : -1;
    report("uname", r, u.release);
}

/* --- userns: a new user namespace would give back every capability */
static void userns(void) {
    int status = 0;
    pid_t child = fork();
    if (child == 0) {
        /* both at once: the new UTS namespace belongs to the new user namespace */
        long r = sys(SYS_unshare, CLONE_NEWUSER | CLONE_NEWUTS, 0, 0, 0, 0, 0);
        report("unshare_user_uts", r, NULL);
        r = sethostname("pst-pwned", 9) == 0 ? 0 : -1;
        report("sethostname_user_uts", r, NULL);
        _exit(0);
    }
    waitpid(child, &status, 0);
    status_line("unshare_user_uts", status);

    child = fork();
    if (child == 0) {
        /* one after the other: the capabilities of the first serve the second */
        long r = sys(SYS_unshare, CLONE_NEWUSER, 0, 0, 0, 0, 0);
        report("unshare_user", r, NULL);
        r = sys(SYS_unshare, CLONE_NEWUTS | CLONE_NEWNS, 0, 0, 0, 0, 0);
        report("unshare_uts_mnt", r, NULL);
        r = sethostname("pst-pwned", 9) == 0 ? 0 : -1;
        report("sethostname", r, NULL);
        r = sys(SYS_mount, (long)"pst", (long)"/tmp", (long)"tmpfs", 0, (long)"size=64k", 0);
        report("mount", r, NULL);
        _exit(0);
    }
    waitpid(child, &status, 0);
    status_line("userns", status);
    struct utsname u;
    long r = uname(&u) == 0 ? 0 : -1;
    report("nodename", r, u.nodename);
}

/* --- outside PID ADDR: a process of the host (shared pid namespace) */
static void outside(pid_t pid, unsigned long addr) {
    long r = sys(SYS_kill, pid, 0, 0, 0, 0, 0);
    report("kill", r, NULL);
    r = sys(SYS_tgkill, pid, pid, 0, 0, 0, 0);
    report("tgkill", r, NULL);

    r = sys(SYS_pidfd_open, pid, 0, 0, 0, 0, 0);
    report("pidfd_open", r, NULL);
    if (r >= 0) {
        long s = sys(SYS_pidfd_send_signal, r, 0, 0, 0, 0, 0);
        report("pidfd_send_signal", s, NULL);
        s = sys(SYS_pidfd_getfd, r, 0, 0, 0, 0, 0);
        report("pidfd_getfd", s, NULL);
        close_if_fd(s);
        close((int)r);
    }

    unsigned char buf[8] = {0};
    struct iovec local = {buf, sizeof buf};
    struct iovec remote = {(void *)addr, sizeof buf};
    r = sys(SYS_process_vm_readv, pid, (long)&local, 1, (long)&remote, 1, 0);
    char hex[17];
    snprintf(hex, sizeof hex, "%02x%02x%02x%02x", buf[0], buf[1], buf[2], buf[3]);
    report("process_vm_readv", r, hex);
    /* the target's first mapping is read-only: EFAULT once access is granted */
    r = sys(SYS_process_vm_writev, pid, (long)&local, 1, (long)&remote, 1, 0);
    report("process_vm_writev", r, NULL);

    r = sys(SYS_ptrace, PTRACE_ATTACH, pid, 0, 0, 0, 0);
    report("ptrace_attach", r, NULL);
    if (r == 0) {
        waitpid(pid, NULL, __WALL);
        sys(SYS_ptrace, PTRACE_DETACH, pid, 0, 0, 0, 0);
    }
    r = sys(SYS_ptrace, PTRACE_SEIZE, pid, 0, 0, 0, 0);
    report("ptrace_seize", r, NULL); /* a seized tracee is let go when we exit */
}

/* --- seccomp: a second listener, or a RET_TRACE filter nobody traces */
static long load_filter(struct sock_filter *insns, unsigned short len, long flags) {
    struct sock_fprog prog = {len, insns};
    return sys(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, (long)&prog, 0, 0, 0);
}

static void seccomp_group(void) {
    pid_t child = fork();
    if (child == 0) {
        struct sock_filter allow[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
        long r = load_filter(allow, 1, SECCOMP_FILTER_FLAG_NEW_LISTENER);
        report("seccomp_new_listener", r, NULL);
        _exit(0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    status_line("seccomp_new_listener", status);

    child = fork();
    if (child == 0) {
        struct sock_filter trace[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_keyctl, 2, 0),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_uname, 1, 0),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRACE),
        };
        long r = load_filter(trace, 5, 0);
        report("seccomp_ret_trace", r, NULL);
        r = sys(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0, 0, 0, 0);
        report("trace_keyctl", r, NULL);
        struct utsname u;
        memset(&u, 0, sizeof u);
        r = sys(SYS_uname, (long)&u, 0, 0, 0, 0, 0);
        report("trace_uname", r, u.release[0] ? u.release : "(empty)");
        _exit(0);
    }
    waitpid(child, &status, 0);
    status_line("seccomp_ret_trace", status);
}

/* --- abi: other system call ABIs; each attempt in a child (the filter kills) */
static long int80(long nr, long a, long b) {
    long ret;
    __asm__ volatile("int $0x80"
                     : "=a"(ret)
                     : "a"(nr), "b"(a), "c"(b)
                     : "memory", "r8", "r9", "r10", "r11");
    return ret;
}

static void abi_child(const char *name, int which) {
    pid_t child = fork();
    if (child == 0) {
        long r;
        if (which == 0)
            r = int80(I386_GETPID, 0, 0);
        else if (which == 1)
            r = int80(I386_KEYCTL, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING);
        else
            r = sys(X32_SYSCALL_BIT | SYS_getpid, 0, 0, 0, 0, 0, 0);
        if (which != 2 && r < 0 && r > -4096) {
            errno = (int)-r;
            r = -1;
        }
        report(name, r, NULL);
        _exit(0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    status_line(name, status);
}

static void abi(void) {
    abi_child("int80_getpid", 0);
    abi_child("int80_keyctl", 1);
    abi_child("x32_getpid", 2);
    struct utsname u;
    long r = uname(&u) == 0 ? 0 : -1;
    report("uname", r, u.release);
}

/* --- race-rlimit N: raise the hard RLIMIT_NOFILE while another thread flips it */
static volatile uint64_t *flip_word;
static volatile uint64_t flip_values[2];
static volatile int flip_stop;
static volatile int flip_started;

static void *flipper(void *arg) {
    (void)arg;
    flip_started = 1;
    while (!flip_stop) {
        *flip_word = flip_values[0];
        *flip_word = flip_values[1];
    }
    return NULL;
}

static void race_rlimit(long rounds) {
    struct rlimit before, after, cur;
    getrlimit(RLIMIT_NOFILE, &before);
    printf("rlimit_before %lu %lu\n", (unsigned long)before.rlim_cur, (unsigned long)before.rlim_max);
    static struct rlimit want __attribute__((aligned(16)));
    want.rlim_cur = before.rlim_cur / 2;
    want.rlim_max = before.rlim_max;
    flip_word = (volatile uint64_t *)&want.rlim_max;
    flip_values[0] = before.rlim_max;
    flip_values[1] = before.rlim_max * 1024;
    pthread_t t;
    flip_started = 0;
    pthread_create(&t, NULL, flipper, NULL);
    while (!flip_started)
        ; /* race from the first call on */
    long ok = 0, refused = 0, other = 0;
    unsigned long highest = 0;
    for (long i = 0; i < rounds; i++) {
        errno = 0;
        long r = syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, &want, NULL);
        if (r == 0)
            ok++;
        else if (errno == EPERM)
            refused++;
        else
            other++;
        if (syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, NULL, &cur) == 0 && cur.rlim_max > highest)
            highest = cur.rlim_max;
    }
    flip_stop = 1;
    pthread_join(t, NULL);
    getrlimit(RLIMIT_NOFILE, &after);
    printf("rlimit_race %ld %ld %ld %lu\n", ok, refused, other, highest);
    printf("rlimit_after %lu %lu\n", (unsigned long)after.rlim_cur, (unsigned long)after.rlim_max);
    fflush(stdout);
}

/* --- race-hostname N: sethostname while another thread rewrites the name */
static void race_hostname(long rounds) {
    static char name[8] __attribute__((aligned(8)));
    uint64_t a, b;
    memcpy(&a, "aaaaaaaa", 8);
    memcpy(&b, "bbbbbbbb", 8);
    memcpy(name, &a, 8);
    flip_word = (volatile uint64_t *)name;
    flip_values[0] = a;
    flip_values[1] = b;
    flip_stop = 0;
    pthread_t t;
    flip_started = 0;
    pthread_create(&t, NULL, flipper, NULL);
    while (!flip_started)
        ; /* race from the first call on */
    long as = 0, bs = 0, mixed = 0, failed = 0, bad = 0;
    struct utsname u;
    for (long i = 0; i < rounds; i++) {
        if (sethostname(name, 8) != 0) {
            failed++;
            continue;
        }
        if (uname(&u) != 0 || strlen(u.nodename) != 8 || strspn(u.nodename, "ab") != 8)
            bad++;
        else if (strcmp(u.nodename, "aaaaaaaa") == 0)
            as++;
        else if (strcmp(u.nodename, "bbbbbbbb") == 0)
            bs++;
        else
            mixed++;
    }
    flip_stop = 1;
    pthread_join(t, NULL);
    printf("hostname_race %ld %ld %ld %ld %ld\n", as, bs, mixed, failed, bad);
    fflush(stdout);
}

int main(int argc, char **argv) {
    /* escape GROUP [ARGS] [GROUP [ARGS]]...: the groups run in order */
    int i = 1;
    if (argc < 2) {
        fprintf(stderr, "usage: escape GROUP [ARGS]...\n");
        return 2;
    }
    while (i < argc) {
        const char *group = argv[i++];
        if (strcmp(group, "denied") == 0) {
            denied();
        } else if (strcmp(group, "userns") == 0) {
            userns();
        } else if (strcmp(group, "seccomp") == 0) {
            seccomp_group();
        } else if (strcmp(group, "abi") == 0) {
            abi();
        } else if (strcmp(group, "outside") == 0 && i + 1 < argc) {
            outside((pid_t)strtol(argv[i], NULL, 10), strtoul(argv[i + 1], NULL, 16));
            i += 2;
        } else if (strcmp(group, "race") == 0 && i < argc) {
            long rounds = strtol(argv[i++], NULL, 10);
            race_rlimit(rounds);
            race_hostname(rounds);
        } else {
            fprintf(stderr, "escape: unknown group or missing argument: %s\n", group);
            return 2;
        }
    }
    return 0;
}
