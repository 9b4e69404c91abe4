/* openat2(2) with RESOLVE_BENEATH and RESOLVE_IN_ROOT, creating and writing:
   every answer is printed, to be compared with runc's line by line. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static int try(int dirfd, const char *name, const char *path, long long flags, long long resolve) {
    struct open_how how = {.flags = flags, .resolve = resolve};
    if (flags & O_CREAT) how.mode = 0640;
    int fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    if (fd < 0) {
        printf("%s: %s\n", name, strerror(errno));
        return -1;
    }
    if (flags & (O_WRONLY | O_RDWR)) {
        if (write(fd, name, strlen(name)) < 0) printf("%s: write %s\n", name, strerror(errno));
    }
    struct stat st;
    fstat(fd, &st);
    printf("%s: ok mode %o size %lld\n", name, st.st_mode & 07777, (long long)st.st_size);
    close(fd);
    return 0;
}

int main(void) {
    const long long B = RESOLVE_BENEATH, R = RESOLVE_IN_ROOT;
    const long long W = O_WRONLY | O_CREAT | O_CLOEXEC;
    umask(027);
    mkdir("/scope", 0755);
    mkdir("/scope/sub", 0755);
    mkdir("/scope/ro", 0555);
    symlink("../..", "/scope/sub/up2");
    symlink("/made-abs", "/scope/abs");
    symlink("sub", "/scope/rel");
    if (chdir("/scope") < 0) return 1;
    try(AT_FDCWD, "create", "new", W, B);
    try(AT_FDCWD, "create in sub", "sub/new", W, B);
    try(AT_FDCWD, "through a relative link", "rel/linked", W, B);
    try(AT_FDCWD, "dotdot out", "../escape", W, B);
    try(AT_FDCWD, "absolute", "/escape", W, B);
    try(AT_FDCWD, "link out", "sub/up2/escape", W, B);
    try(AT_FDCWD, "absolute link", "abs", W, B);
    try(AT_FDCWD, "in root: absolute", "/made-root", W, R);
    try(AT_FDCWD, "in root: dotdot", "../../made-up", W, R);
    try(AT_FDCWD, "in root: absolute link", "abs", W, R);
    try(AT_FDCWD, "no symlinks", "rel/nolink", W, B | RESOLVE_NO_SYMLINKS);
    try(AT_FDCWD, "truncate", "new", O_WRONLY | O_TRUNC | O_CLOEXEC, B);
    try(AT_FDCWD, "exclusive", "new", W | O_EXCL, B);
    try(AT_FDCWD, "both scopes", "x", W, B | R);
    try(AT_FDCWD, "a directory for writing", "sub", O_WRONLY | O_CLOEXEC, B);
    int dirfd = open("/scope/sub", O_PATH | O_DIRECTORY | O_CLOEXEC);
    try(dirfd, "dirfd", "via-fd", W, B);
    try(dirfd, "dirfd up", "../via-fd-up", W, R);
    try(AT_FDCWD, "tmpfile", "sub", O_TMPFILE | O_WRONLY | O_CLOEXEC, B);
    if (setresgid(1000, 1000, 1000) || setresuid(1000, 1000, 1000)) return 2;
    try(AT_FDCWD, "as a user: read-only dir", "ro/x", W, B);
    try(AT_FDCWD, "as a user: root's dir", "sub/x", W, B);
    try(AT_FDCWD, "as a user: root's file", "new", O_WRONLY | O_CLOEXEC, B);
    return 0;
}
