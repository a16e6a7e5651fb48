/* The article's "Source program 2", from "Linux Process Communication Summary
 * (III) - shared memory", written afresh: the same calls in the same order,
 * its error_out and its output line. What differs is only what a shared
 * machine needs:
 *   - the key comes from argv[1] (0 is IPC_PRIVATE), not the fixed 12345678:
 *     two students (or two tests) never meet in one segment;
 *   - IPC_CREAT|IPC_EXCL|0600, not IPC_CREAT|0666: without IPC_EXCL shmget
 *     hands back someone else's segment with the same key, and 0666 lets
 *     every user read and write it; IPC_EXCL fails with EEXIST instead;
 *   - the article's sleep(30) only when asked: argv[2] seconds (default 0).
 * Kept as the article has it: error_out("shmdt") after shmctl(IPC_RMID), a
 * copy-paste slip that would name the wrong call.
 * Build: cc -o article article.c        (no -lrt: System V was always in libc)
 * Run:   ./article 0x53c0ffee [seconds]
 */
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/wait.h>

void error_out(const char *msg)
{
    perror(msg);
    exit(EXIT_FAILURE);
}

int main(int argc, char *argv[])
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s key [seconds]\n", argv[0]);
        return 2;
    }
    key_t mykey = (key_t)strtoul(argv[1], NULL, 0);
    const unsigned hold = argc > 2 ? (unsigned)atoi(argv[2]) : 0;
    const size_t region_size = sysconf(_SC_PAGE_SIZE);
    int smid = shmget(mykey, region_size, IPC_CREAT | IPC_EXCL | 0600);
    if (smid == -1)
        error_out("shmget");
    void *ptr;
    ptr = shmat(smid, NULL, 0);
    if (ptr == (void *)-1)
        error_out("shmat");
    pid_t pid = fork();
    if (pid == 0) {
        u_long *d = (u_long *)ptr;
        *d = 0xdeadbeef;
        exit(0);
    } else {
        int status;
        waitpid(pid, &status, 0);
        printf("child wrote %#lx\n", *(u_long *)ptr);
    }
    sleep(hold);
    int r = shmdt(ptr);
    if (r == -1)
        error_out("shmdt");
    r = shmctl(smid, IPC_RMID, NULL);
    if (r == -1)
        error_out("shmdt");
    return 0;
}
