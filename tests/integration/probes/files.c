/* The path calls, one after another, each printed as "name return errno".
 *
 * Run as root in a container with a writable root, under pysandbox (served
 * through the gofer) and under runc (the kernel's answers): the two outputs
 * must be the same, line for line. Nothing printed depends on the file
 * system type, inode numbers or the time of the run. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/xattr.h>
#include <unistd.h>

static void show(const char *name, long r, int err) {
    printf("%s %ld %s\n", name, r < 0 ? -1L : r, r < 0 ? strerrorname_np(err) : "-");
}

#define T(name, expr)                 \
    do {                              \
        errno = 0;                    \
        long r_ = (long)(expr);       \
        show(name, r_, errno);        \
    } while (0)

/* an fd-returning call: print 0 for any fd (numbers may differ), and close it */
#define FD(name, expr)                      \
    do {                                    \
        errno = 0;                          \
        int fd_ = (expr);                   \
        show(name, fd_ < 0 ? -1 : 0, errno); \
        if (fd_ >= 0) close(fd_);           \
    } while (0)

static struct stat st;

static void mode_of(const char *path) {
    /* a directory's size and link count are the file system's business
       (tmpfs counts entries, ext4 says 4096; overlayfs merges) */
    if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
        printf("  %s mode %o uid %d gid %d\n", path, st.st_mode, st.st_uid, st.st_gid);
    else if (lstat(path, &st) == 0)
        printf("  %s mode %o nlink %ld uid %d gid %d size %ld\n", path, st.st_mode,
               (long)st.st_nlink, st.st_uid, st.st_gid, (long)st.st_size);
    else
        printf("  %s %s\n", path, strerrorname_np(errno));
}

static int by_name(const struct dirent **a, const struct dirent **b) {
    return strcmp((*a)->d_name, (*b)->d_name);
}

int main(void) {
    char buf[256];
    umask(022);
    T("mkdir", mkdir("/w", 0777));
    mode_of("/w");
    T("mkdir-again", mkdir("/w", 0777));
    T("chdir", chdir("/w"));
    FD("open-relative-create", open("f", O_CREAT | O_WRONLY | O_EXCL, 0666));
    mode_of("/w/f");
    int fd = open("/w/f", O_WRONLY | O_APPEND);
    T("write-through-fd", write(fd, "hello\n", 6));
    T("fchmod-on-fd", fchmod(fd, 0604));
    T("fstat-on-fd", fstat(fd, &st));
    printf("  fstat mode %o size %ld\n", st.st_mode, (long)st.st_size);
    close(fd);
    FD("open-excl-exists", open("f", O_CREAT | O_EXCL | O_WRONLY, 0600));
    FD("open-missing", open("/w/missing", O_RDONLY));
    FD("open-dir-for-write", open("/w", O_WRONLY));
    FD("open-directory-on-file", open("/w/f", O_RDONLY | O_DIRECTORY));
    FD("open-trailing-slash-file", open("/w/f/", O_RDONLY));
    int d = open("/w", O_RDONLY | O_DIRECTORY);
    T("mkdirat-dirfd", mkdirat(d, "sub", 0700));
    FD("openat-dirfd-create", openat(d, "sub/g", O_CREAT | O_WRONLY, 0640));
    T("fstatat-dirfd", fstatat(d, "sub/g", &st, 0));
    printf("  mode %o\n", st.st_mode);
    T("openat-bad-dirfd", openat(999, "x", O_RDONLY));
    int pipefd[2];
    pipe(pipefd);
    T("openat-pipe-dirfd", openat(pipefd[0], "x", O_RDONLY));
    T("openat-file-dirfd", ({ int f = open("/w/f", O_RDONLY); int r = openat(f, "x", O_RDONLY); close(f); r; }));
    T("symlink-relative", symlink("sub/g", "/w/ln"));
    T("symlink-absolute", symlink("/w/sub", "/w/lnabs"));
    T("symlink-exists", symlink("x", "/w/ln"));
    T("lstat-symlink", lstat("/w/ln", &st));
    printf("  islnk %d\n", S_ISLNK(st.st_mode));
    T("stat-through-absolute-link", stat("/w/lnabs/g", &st));
    long n = readlink("/w/ln", buf, sizeof buf);
    show("readlink", n, errno);
    if (n > 0) printf("  %.*s\n", (int)n, buf);
    T("readlink-short-buffer", readlink("/w/ln", buf, 3));
    T("readlink-zero-buffer", readlink("/w/ln", buf, 0));
    T("readlink-not-a-link", readlink("/w/f", buf, sizeof buf));
    T("readlinkat-dirfd", readlinkat(d, "ln", buf, sizeof buf));
    T("symlink-dangling", symlink("/w/made-through-link", "/w/dangle"));
    FD("create-through-dangling", open("/w/dangle", O_CREAT | O_WRONLY, 0600));
    mode_of("/w/made-through-link");
    FD("excl-on-symlink", open("/w/ln", O_CREAT | O_EXCL | O_WRONLY, 0600));
    FD("nofollow-on-symlink", open("/w/ln", O_RDONLY | O_NOFOLLOW));
    FD("opath-nofollow", open("/w/ln", O_PATH | O_NOFOLLOW));
    T("loop1", symlink("loop2", "/w/loop1"));
    T("loop2", symlink("loop1", "/w/loop2"));
    T("stat-loop", stat("/w/loop1", &st));
    T("stat-file-as-dir", stat("/w/f/x", &st));
    T("stat-missing-middle", stat("/w/nope/x", &st));
    T("stat-dotdot", stat("/w/sub/../f", &st));
    T("stat-dotdot-above-root", stat("/../../w/f", &st));
    T("stat-dotdot-through-link", stat("/w/lnabs/../f", &st));
    /* int arguments with garbage in the register's upper half: the kernel ignores it */
    T("newfstatat-high-bits",
      syscall(SYS_newfstatat, 0xdead00000000L | (unsigned)AT_FDCWD, "/w/f", &st,
              0xbeef00000000L | AT_SYMLINK_NOFOLLOW));
    T("faccessat2-high-bits", syscall(SYS_faccessat2, AT_FDCWD, "/w/f", 0x100000000L | R_OK,
                                      0x700000000L | AT_EACCESS));
    T("unlinkat-high-bits", ({ mkdir("/w/hb", 0700);
      syscall(SYS_unlinkat, AT_FDCWD, "/w/hb", 0x500000000L | AT_REMOVEDIR); }));
    T("stat-empty", stat("", &st));
    T("stat-bad-pointer", stat((char *)8, &st));
    T("stat-bad-buffer", stat("/w/f", (struct stat *)8));
    T("access-f", access("/w/f", F_OK));
    T("access-w", access("/w/f", W_OK));
    T("access-x", access("/w/f", X_OK));
    T("access-bad-mode", access("/w/f", 8));
    T("faccessat2-eaccess", syscall(SYS_faccessat2, AT_FDCWD, "/w/f", R_OK, AT_EACCESS));
    T("faccessat2-bad-flag", syscall(SYS_faccessat2, AT_FDCWD, "/w/f", R_OK, 0x4));
    T("chmod", chmod("/w/f", 04751));
    mode_of("/w/f");
    T("fchmodat-dirfd", fchmodat(d, "f", 0644, 0));
    T("chown", chown("/w/f", 1000, 1001));
    mode_of("/w/f");
    T("chown-keep", chown("/w/f", -1, 5));
    mode_of("/w/f");
    T("lchown-link", lchown("/w/ln", 7, 8));
    mode_of("/w/ln");
    mode_of("/w/sub/g");
    struct timespec ts[2] = {{100, 5}, {200, 7}};
    T("utimensat", utimensat(AT_FDCWD, "/w/f", ts, 0));
    stat("/w/f", &st);
    printf("  atime %ld.%ld mtime %ld.%ld\n", (long)st.st_atim.tv_sec, st.st_atim.tv_nsec,
           (long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    struct timespec bad[2] = {{1, 2000000000}, {1, 0}};
    T("utimensat-bad-ns", utimensat(AT_FDCWD, "/w/f", bad, 0));
    struct timeval tv[2] = {{300, 1}, {400, 2}};
    T("utimes", utimes("/w/f", tv));
    stat("/w/f", &st);
    printf("  atime %ld.%ld mtime %ld.%ld\n", (long)st.st_atim.tv_sec, st.st_atim.tv_nsec,
           (long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    T("truncate", truncate("/w/f", 3));
    mode_of("/w/f");
    T("truncate-negative", truncate("/w/f", -1));
    T("truncate-dir", truncate("/w", 0));
    T("link", link("/w/f", "/w/hard"));
    mode_of("/w/f");
    T("link-exists", link("/w/f", "/w/hard"));
    T("link-dir", link("/w/sub", "/w/subhard"));
    T("rename", rename("/w/hard", "/w/sub/hard2"));
    T("rename-missing", rename("/w/hard", "/w/x"));
    T("renameat2-noreplace",
      syscall(SYS_renameat2, AT_FDCWD, "/w/f", AT_FDCWD, "/w/sub/g", RENAME_NOREPLACE));
    T("renameat2-exchange",
      syscall(SYS_renameat2, AT_FDCWD, "/w/f", AT_FDCWD, "/w/sub/g", RENAME_EXCHANGE));
    mode_of("/w/f");
    T("renameat-dirfd", renameat(d, "sub/g", d, "g2"));
    T("mknod-fifo", mknod("/w/fifo", S_IFIFO | 0666, 0));
    mode_of("/w/fifo");
    FD("open-fifo-nonblock", open("/w/fifo", O_RDONLY | O_NONBLOCK));
    T("mknod-regular", mknod("/w/plain", 0640, 0));
    mode_of("/w/plain");
    T("unlink-dir", unlink("/w/sub"));
    T("rmdir-not-empty", rmdir("/w/sub"));
    T("rmdir-file", rmdir("/w/f"));
    T("mkdir-empty", mkdir("/w/empty", 0755));
    T("unlinkat-removedir", unlinkat(d, "empty", AT_REMOVEDIR));
    T("unlinkat-bad-flag", unlinkat(d, "plain", 0x4));
    T("unlink", unlink("/w/plain"));
    T("unlink-missing", unlink("/w/plain"));
    T("setxattr", setxattr("/w/g2", "user.k", "value", 5, 0));
    T("setxattr-create-exists", setxattr("/w/g2", "user.k", "v", 1, XATTR_CREATE));
    T("getxattr-size", getxattr("/w/g2", "user.k", NULL, 0));
    n = getxattr("/w/g2", "user.k", buf, sizeof buf);
    show("getxattr", n, errno);
    if (n > 0) printf("  %.*s\n", (int)n, buf);
    T("getxattr-small", getxattr("/w/g2", "user.k", buf, 2));
    T("listxattr-has-k", ({ long m = listxattr("/w/g2", buf, sizeof buf); m > 0 && memmem(buf, m, "user.k", 7) ? 1 : m; }));
    T("removexattr", removexattr("/w/g2", "user.k"));
    T("getxattr-gone", getxattr("/w/g2", "user.k", buf, sizeof buf));
    T("getxattr-empty-name", getxattr("/w/g2", "", buf, sizeof buf));
    struct statfs sfs;
    T("statfs", statfs("/w", &sfs));
    T("statfs-missing", statfs("/w/none", &sfs));
    struct statx stx;
    T("statx", statx(AT_FDCWD, "/w/g2", 0, STATX_BASIC_STATS, &stx));
    printf("  statx mode %o size %lld uid %u\n", stx.stx_mode, (long long)stx.stx_size, stx.stx_uid);
    T("statx-nofollow", statx(AT_FDCWD, "/w/ln", AT_SYMLINK_NOFOLLOW, STATX_TYPE, &stx));
    printf("  statx islnk %d\n", S_ISLNK(stx.stx_mode));
    T("statx-bad-flags", statx(AT_FDCWD, "/w/g2", 0x6000, STATX_TYPE, &stx));
    FD("tmpfile", open("/w", O_TMPFILE | O_RDWR, 0600));
    /* an O_TMPFILE file given a name: by its fd (AT_EMPTY_PATH), and the way
       open(2) shows, through /proc/self/fd with AT_SYMLINK_FOLLOW */
    int tmp = open("/w", O_TMPFILE | O_RDWR, 0640);
    show("tmpfile-for-linkat", tmp < 0 ? -1 : 0, errno);
    if (tmp >= 0) {
        T("tmpfile-write", write(tmp, "unnamed\n", 8));
        T("linkat-empty-path", linkat(tmp, "", AT_FDCWD, "/w/named", AT_EMPTY_PATH));
        mode_of("/w/named");
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", tmp);
        T("linkat-proc-fd", linkat(AT_FDCWD, proc, AT_FDCWD, "/w/named2", AT_SYMLINK_FOLLOW));
        mode_of("/w/named2");
        T("linkat-proc-fd-exists", linkat(AT_FDCWD, proc, AT_FDCWD, "/w/named2", AT_SYMLINK_FOLLOW));
        T("linkat-proc-fd-nofollow", linkat(AT_FDCWD, proc, AT_FDCWD, "/w/named3", 0));
        T("linkat-empty-path-missing-dir", linkat(tmp, "", AT_FDCWD, "/w/nodir/x", AT_EMPTY_PATH));
        close(tmp);
    }
    int excl = open("/w", O_TMPFILE | O_RDWR | O_EXCL, 0600);
    if (excl >= 0) {
        T("linkat-tmpfile-excl", linkat(excl, "", AT_FDCWD, "/w/never", AT_EMPTY_PATH));
        close(excl);
    }
    int devnull = open("/dev/null", O_RDONLY);
    T("linkat-other-mount", linkat(devnull, "", AT_FDCWD, "/w/null", AT_EMPTY_PATH));
    close(devnull);
    int named = open("/w/g2", O_RDONLY);
    T("linkat-named-file-by-fd", linkat(named, "", AT_FDCWD, "/w/g2-again", AT_EMPTY_PATH));
    close(named);
    T("linkat-bad-fd", linkat(999, "", AT_FDCWD, "/w/bad", AT_EMPTY_PATH));
    /* the kernel's own O_LARGEFILE bit (glibc leaves it out on x86_64) */
    FD("open-largefile", syscall(SYS_openat, AT_FDCWD, "/w/g2", O_RDONLY | 0100000));
    FD("openat2", syscall(SYS_openat2, AT_FDCWD, "/w/g2", &(struct { unsigned long long f, m, r; }){O_RDONLY, 0, 0}, 24));
    /* the kernel's mounts stay the kernel's */
    n = readlink("/proc/self/cwd", buf, sizeof buf);
    show("readlink-proc-cwd", n, errno);
    if (n > 0) printf("  %.*s\n", (int)n, buf);
    T("symlink-to-proc", symlink("/proc/self/mounts", "/w/mtab"));
    FD("open-through-link-to-proc", open("/w/mtab", O_RDONLY));
    T("symlink-to-proc-relative", symlink("../proc/self/status", "/w/status"));
    FD("open-through-relative-link-to-proc", open("/w/status", O_RDONLY));
    FD("open-dev-null", open("/dev/null", O_WRONLY));
    T("stat-proc", stat("/proc/self", &st));
    T("getcwd", getcwd(buf, sizeof buf) ? 0 : -1);
    printf("  %s\n", buf);
    T("chdir-sub", chdir("sub"));
    FD("open-relative-in-sub", open("hard2", O_RDONLY));
    T("chdir-dotdot", chdir(".."));
    struct dirent **names;
    int count = scandir("/w", &names, NULL, by_name);
    printf("readdir %d:", count);
    for (int i = 0; i < count; i++) printf(" %s", names[i]->d_name);
    printf("\n");
    return 0;
}
