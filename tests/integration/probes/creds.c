/* Credentials change under the sentry's cache of them (syscalls/creds.py):
 * every answer after a set*id / setgroups / capset call must be judged with
 * the new credentials, by the sentry's own lookups and by the gofer alike,
 * in the thread that changed them and not in the others. The output is
 * compared line by line with runc's. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *what, long rc) {
    printf("%s = %ld %s\n", what, rc, rc < 0 ? strerrorname_np(errno) : "");
    fflush(stdout);
}

static void probe(const char *who) {
    struct stat st;
    char label[128], buf[64];
    snprintf(label, sizeof label, "%s stat /locked/f", who);
    report(label, stat("/locked/f", &st));
    snprintf(label, sizeof label, "%s access /locked/f F_OK", who);
    report(label, access("/locked/f", F_OK));
    snprintf(label, sizeof label, "%s readlink /locked/l", who);
    report(label, readlink("/locked/l", buf, sizeof buf));
    snprintf(label, sizeof label, "%s open /locked/f", who);
    int fd = open("/locked/f", O_RDONLY);
    report(label, fd);
    if (fd >= 0) close(fd);
    snprintf(label, sizeof label, "%s open /group/f", who);
    fd = open("/group/f", O_RDONLY);
    report(label, fd);
    if (fd >= 0) close(fd);
    snprintf(label, sizeof label, "%s stat /group/f", who);
    report(label, stat("/group/f", &st));
    snprintf(label, sizeof label, "%s mkdir /group/d", who);
    long rc = mkdir("/group/d", 0755);
    report(label, rc);
    if (rc == 0) rmdir("/group/d");
}

static void *in_thread(void *arg) {
    (void)arg;
    /* a raw setresuid: this thread alone changes (glibc would change all) */
    report("thread setresuid 1000", syscall(SYS_setresuid, 1000, 1000, 1000));
    probe("thread as 1000");
    return NULL;
}

int main(void) {
    mkdir("/locked", 0700);
    close(open("/locked/f", O_CREAT | O_WRONLY, 0644));
    symlink("target", "/locked/l");
    mkdir("/group", 0770);
    chown("/group", 0, 2000);
    close(open("/group/f", O_CREAT | O_WRONLY, 0640));
    chown("/group/f", 0, 2000);
    probe("root");
    /* drop the capabilities that override directory permissions, keep uid 0 */
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    report("capget", syscall(SYS_capget, &hdr, data));
    data[0].effective &= ~((1u << CAP_DAC_OVERRIDE) | (1u << CAP_DAC_READ_SEARCH));
    report("capset without DAC", syscall(SYS_capset, &hdr, data));
    probe("root without DAC");
    pthread_t t;
    pthread_create(&t, NULL, in_thread, NULL);
    pthread_join(t, NULL);
    probe("main after the thread");
    /* A directory's mode changed through an fd (fchmod never reaches the
     * sentry) between two lookups of another process: the second one must
     * see the new mode (the sentry keeps directory modes, inotify keeps them
     * true). */
    int up[2], down[2];
    if (pipe(up) != 0 || pipe(down) != 0) return 1;
    pid_t child = fork();
    if (child == 0) {
        char c;
        gid_t g[] = {2000};
        setgroups(1, g);
        setresgid(1000, 1000, 1000);
        setresuid(1000, 1000, 1000);
        /* enough lookups for the sentry to keep directory modes under watch */
        struct stat warm;
        for (int i = 0; i < 600; i++) stat("/group/f", &warm);
        probe("child 1000 in group 2000, before");
        if (write(up[1], "x", 1) != 1 || read(down[0], &c, 1) != 1) _exit(1);
        probe("child 1000 in group 2000, after fchmod 0700");
        if (write(up[1], "x", 1) != 1 || read(down[0], &c, 1) != 1) _exit(1);
        probe("child 1000 in group 2000, after fchmod 0750");
        _exit(0);
    }
    char c;
    int dir = open("/group", O_RDONLY | O_DIRECTORY);
    if (read(up[0], &c, 1) != 1) return 1;
    report("fchmod /group 0700", fchmod(dir, 0700));
    if (write(down[1], "x", 1) != 1 || read(up[0], &c, 1) != 1) return 1;
    report("fchmod /group 0750", fchmod(dir, 0750));
    if (write(down[1], "x", 1) != 1) return 1;
    int status;
    waitpid(child, &status, 0);
    report("child exit", WEXITSTATUS(status));
    close(dir);
    gid_t groups[] = {2000};
    report("setgroups 2000", setgroups(1, groups));
    report("setresgid 1000", setresgid(1000, 1000, 1000));
    report("setresuid 1000", setresuid(1000, 1000, 1000));
    probe("1000 in group 2000");
    return 0;
}
