/* Path calls after chroot(2) inside the container: absolute paths, absolute
 * and relative symlinks and ".." are the new root's, the working directory's
 * relative paths follow. Compared line by line with runc's output. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void show(const char *name, long r) {
    printf("%s %ld %s\n", name, r < 0 ? -1L : r, r < 0 ? strerrorname_np(errno) : "-");
    fflush(stdout);
}

static void content(const char *name, const char *path) {
    char buf[64] = {0};
    int fd = open(path, O_RDONLY);
    long n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
    if (fd >= 0) close(fd);
    if (n > 0 && buf[n - 1] == '\n') buf[n - 1] = 0;
    printf("%s %s\n", name, n < 0 ? strerrorname_np(errno) : buf);
    fflush(stdout);
}

int main(void) {
    struct stat st;
    char buf[256];
    mkdir("/jail", 0755);
    mkdir("/jail/etc", 0755);
    mkdir("/jail/sub", 0755);
    int fd = open("/jail/etc/f", O_CREAT | O_WRONLY, 0644);
    if (write(fd, "inside\n", 7) != 7) return 1;
    close(fd);
    fd = open("/etc/only-outside", O_CREAT | O_WRONLY, 0644);
    if (write(fd, "outside\n", 8) != 8) return 1;
    close(fd);
    symlink("/etc/f", "/jail/abs");
    symlink("../../../etc/f", "/jail/sub/up");
    symlink("/etc/only-outside", "/jail/abs-out");
    symlink("/", "/jail/sub/root");
    show("chroot", chroot("/jail"));
    show("chdir /", chdir("/"));
    show("stat /etc/f", stat("/etc/f", &st));
    show("stat etc/f", stat("etc/f", &st));
    content("read /abs", "/abs");
    content("read /sub/up", "/sub/up");
    content("read /abs-out", "/abs-out");
    content("read /../etc/f", "/../etc/f");
    content("read /sub/root/etc/f", "/sub/root/etc/f");
    content("read /etc/only-outside", "/etc/only-outside");
    show("lstat /abs", lstat("/abs", &st));
    long n = readlink("/abs", buf, sizeof buf);
    show("readlink /abs", n);
    show("access /abs R_OK", access("/abs", R_OK));
    show("access /abs-out F_OK", access("/abs-out", F_OK));
    show("mkdir /made", mkdir("/made", 0700));
    show("stat /made", stat("/made", &st));
    fd = open("/sub/new", O_CREAT | O_WRONLY, 0600);
    show("create /sub/new", fd < 0 ? -1 : 0);
    if (fd >= 0) close(fd);
    show("chdir sub", chdir("sub"));
    show("stat new (relative)", stat("new", &st));
    content("read up (relative)", "up");
    show("rename new -> ../renamed", rename("new", "../renamed"));
    show("stat /renamed", stat("/renamed", &st));
    show("symlink /abs2", symlink("/etc/f", "/abs2"));
    content("read /abs2", "/abs2");
    show("unlink /abs2", unlink("/abs2"));
    show("link /etc/f /hard", link("/etc/f", "/hard"));
    show("stat /hard nlink", stat("/hard", &st) == 0 ? (long)st.st_nlink : -1);
    return 0;
}
