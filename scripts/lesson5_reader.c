/* lesson5_reader.c: read lesson-5's segment from C.
 *
 *   cc -o lesson5_reader scripts/lesson5_reader.c     (no -lrt since glibc 2.34)
 *   ./lesson5_reader [/NAME]           POSIX, default /shm-lessons-5-$USER
 *   ./lesson5_reader --key KEY         System V, KEY decimal or 0x-hex
 *   add a last argument TIMEOUT (seconds, default 30)
 *
 * Waits (polling, never longer than TIMEOUT) until the writer's object exists
 * and its state word says READY, prints the message and the sequence number,
 * then acknowledges. It removes nothing: the writer does. The layout is the
 * one in lessons/05-unrelated/src/layout.rs: fixed offsets, never pointers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SEG_SIZE 4096
#define STATE_READY 1
#define STATE_ACKED 2

struct header {                 /* offset */
    char magic[8];              /*  0 "SHMLSN5\0" */
    uint32_t version;           /*  8 1 */
    uint32_t state;             /* 12 atomic: 0 empty, 1 ready, 2 acked */
    int32_t writer_pid;         /* 16 */
    int32_t reader_pid;         /* 20 set before the ack */
    uint64_t sequence;          /* 24 */
    uint64_t writer_addr;       /* 32 where the writer mapped it: never a pointer here */
    uint32_t msg_len;           /* 40 */
    uint32_t reserved;          /* 44 */
    char msg[];                 /* 48 UTF-8 bytes */
};
_Static_assert(offsetof(struct header, state) == 12, "layout");
_Static_assert(offsetof(struct header, sequence) == 24, "layout");
_Static_assert(offsetof(struct header, msg) == 48, "layout");

static void die(const char *what) {     /* the article's error_out, with the errno name */
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 32)
    fprintf(stderr, "ERROR [%s %s] %s\n", strerrorname_np(errno), strerror(errno), what);
#else
    fprintf(stderr, "ERROR [errno %d %s] %s\n", errno, strerror(errno), what);
#endif
    exit(1);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static long nap_ns = 1000000;           /* 1 ms, growing to 25 ms */
static void nap(void) {
    struct timespec t = {0, nap_ns};
    nanosleep(&t, NULL);
    if (nap_ns < 25000000) nap_ns *= 2;
}

/* Open and map the segment once; NULL if it does not exist (yet). */
static struct header *attach(const char *name, int sysv, key_t key, long *id, int *writable) {
    if (sysv) {
        int shmid = shmget(key, 0, 0);
        if (shmid == -1) { if (errno == ENOENT) return NULL; die("shmget"); }
        *writable = 1;
        void *p = shmat(shmid, NULL, 0);
        if (p == (void *)-1 && errno == EACCES) { *writable = 0; p = shmat(shmid, NULL, SHM_RDONLY); }
        if (p == (void *)-1) die("shmat");
        *id = shmid;
        return p;
    }
    *writable = 1;
    int fd = shm_open(name, O_RDWR, 0);
    if (fd == -1 && errno == EACCES) { *writable = 0; fd = shm_open(name, O_RDONLY, 0); }
    if (fd == -1) { if (errno == ENOENT) return NULL; die("shm_open"); }
    struct stat st;
    if (fstat(fd, &st) == -1) die("fstat");
    if (st.st_size == 0) { close(fd); return NULL; }   /* being created */
    if (st.st_size != SEG_SIZE) {
        fprintf(stderr, "ERROR %s is %lld bytes, not %d: not a lesson-5 segment\n",
                name, (long long)st.st_size, SEG_SIZE);
        exit(1);
    }
    void *p = mmap(NULL, SEG_SIZE, PROT_READ | (*writable ? PROT_WRITE : 0), MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) die("mmap");
    close(fd);                          /* the mapping keeps the object */
    *id = (long)st.st_ino;
    return p;
}

static void detach(struct header *h, int sysv) {
    if (sysv ? shmdt(h) : munmap(h, SEG_SIZE)) die("detach");
}

int main(int argc, char *argv[]) {
    char name[256];
    int sysv = 0;
    key_t key = 0;
    double timeout = 30;
    int i = 1;
    struct passwd *pw = getpwuid(getuid());
    snprintf(name, sizeof name, "/shm-lessons-5-%s", pw ? pw->pw_name : "unknown");
    char *rest = "";              /* what a number left unparsed */
    if (i < argc && strcmp(argv[i], "--key") == 0 && i + 1 < argc) {
        sysv = 1;
        key = (key_t)strtoul(argv[i + 1], &rest, 0);
        if (rest == argv[i + 1]) rest = "?";  /* no digits at all */
        i += 2;
    } else if (i < argc && argv[i][0] == '/') {
        snprintf(name, sizeof name, "%s", argv[i++]);
    }
    if (i < argc && *rest == '\0') {
        timeout = strtod(argv[i], &rest);
        if (rest == argv[i]) rest = "?";
        i++;
    }
    if (i < argc || *rest != '\0' || timeout < 0) {
        fprintf(stderr, "usage: %s [/NAME | --key KEY] [TIMEOUT]\n", argv[0]);
        return 2;
    }

    double end = now() + timeout;
    long stale_id = -1;
    for (;;) {
        long id = -1;
        int writable = 0;
        struct header *h = attach(name, sysv, key, &id, &writable);
        if (h && id != stale_id) {
            while (now() < end) {           /* wait for READY: acquire load */
                uint32_t s = __atomic_load_n(&h->state, __ATOMIC_ACQUIRE);
                if (s == STATE_READY || s == STATE_ACKED) break;
                nap();
            }
            uint32_t s = __atomic_load_n(&h->state, __ATOMIC_ACQUIRE);
            if (s == STATE_READY || s == STATE_ACKED) {
                if (memcmp(h->magic, "SHMLSN5", 8) != 0 || h->version != 1 || h->msg_len > SEG_SIZE - 48) {
                    fprintf(stderr, "ERROR not a lesson-5 segment (magic, version or length)\n");
                    return 1;
                }
                if (kill(h->writer_pid, 0) == -1 && errno == ESRCH) {
                    printf("stale: writer pid %d is gone; waiting for a new one\n", h->writer_pid);
                    stale_id = id;
                } else {
                    printf("c reader: mapped at %p, the writer at %#llx\n", (void *)h,
                           (unsigned long long)h->writer_addr);
                    printf("c reader: message: %.*s\n", (int)h->msg_len, h->msg);
                    printf("c reader: sequence: %llu\n", (unsigned long long)h->sequence);
                    if (writable) {         /* acknowledge: release store */
                        h->reader_pid = getpid();
                        __atomic_store_n(&h->state, STATE_ACKED, __ATOMIC_RELEASE);
                        printf("c reader: acknowledged\n");
                    } else {
                        printf("c reader: read-only, no acknowledgement\n");
                    }
                    detach(h, sysv);
                    return 0;
                }
            }
        }
        if (h) detach(h, sysv);
        if (now() >= end) {
            if (sysv)
                fprintf(stderr, "ERROR no ready lesson-5 segment with key %#010x within %g s\n", (unsigned)key, timeout);
            else
                fprintf(stderr, "ERROR no ready lesson-5 object %s within %g s\n", name, timeout);
            return 1;
        }
        nap();
    }
}
