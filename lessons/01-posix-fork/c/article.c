/* The article's "Source code 1", from "Linux Process Communication Summary
 * (III) - shared memory", written afresh: the same calls in the same order,
 * its error_out and its output line. What differs is only what a shared
 * machine needs:
 *   - the name comes from argv[1], not the fixed "/mymem": two students (or
 *     two tests) never meet in one object;
 *   - O_CREAT|O_EXCL|O_RDWR, 0600, not O_CREAT|O_TRUNC|O_RDWR, 0666: O_TRUNC
 *     would empty someone else's object of the same name and 0666 lets every
 *     user read and write it; O_EXCL fails with EEXIST instead;
 *   - the article's sleep(50) only when asked: argv[2] seconds (default 0).
 * Build: cc -o article article.c        (no -lrt: glibc >= 2.34)
 * Run:   ./article /shm-lessons-1-c-$$ [seconds]
 */
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/wait.h>

void error_out(const char *msg)
{
    perror(msg);
    exit(EXIT_FAILURE);
}

int main(int argc, char *argv[])
{
    int r;
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s /name [seconds]\n", argv[0]);
        return 2;
    }
    const char *memname = argv[1];
    const unsigned hold = argc > 2 ? (unsigned)atoi(argv[2]) : 0;
    const size_t region_size = sysconf(_SC_PAGE_SIZE);
    int fd = shm_open(memname, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd == -1)
        error_out("shm_open");
    r = ftruncate(fd, region_size);
    if (r != 0)
        error_out("ftruncate");
    void *ptr = mmap(0, region_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (ptr == MAP_FAILED)
        error_out("MMAP");
    close(fd);
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
    r = munmap(ptr, region_size);
    if (r != 0)
        error_out("munmap");
    r = shm_unlink(memname);
    if (r != 0)
        error_out("shm_unlink");
    return 0;
}
