/* execve of each path on the command line, in a child: prints the errno the
 * call failed with, or how the program ended. Compared line by line with
 * runc's output (tests/integration/test_execve.py). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void try_exec(const char *path, int nofollow) {
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) return;
    pid_t pid = fork();
    if (pid == 0) {
        char *argv[] = {(char *)path, NULL};
        char *envp[] = {"PATH=/bin", NULL};
        if (nofollow)
            syscall(SYS_execveat, AT_FDCWD, path, argv, envp, AT_SYMLINK_NOFOLLOW);
        else
            execve(path, argv, envp);
        int err = errno;
        if (write(pipefd[1], &err, sizeof err) < 0) _exit(126);
        _exit(127);
    }
    close(pipefd[1]);
    int err = 0;
    ssize_t got = read(pipefd[0], &err, sizeof err);
    close(pipefd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    const char *how = nofollow ? "execveat nofollow" : "execve";
    if (got == sizeof err)
        printf("%s %s = %s\n", how, path, strerrorname_np(err));
    else if (WIFEXITED(status))
        printf("%s %s ran: exit %d\n", how, path, WEXITSTATUS(status));
    else
        printf("%s %s ran: signal %d\n", how, path, WTERMSIG(status));
    fflush(stdout);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "nofollow:", 9) == 0)
            try_exec(argv[i] + 9, 1);
        else
            try_exec(argv[i], 0);
    }
    return 0;
}
