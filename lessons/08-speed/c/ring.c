/* A plain C ring doing the same work as lesson-8's Rust ring, to compare.
 *
 *   cc -O2 -o /tmp/ring-c lessons/08-speed/c/ring.c && /tmp/ring-c
 *
 * Parent -> child, 256 MiB in 64 KiB chunks through 16 slots of a
 * MAP_SHARED|MAP_ANONYMOUS mapping; head and tail on separate cache lines;
 * pure spin; parent on CPU 0, child on CPU 1. The writer stamps a sequence
 * number into a hot buffer and copies it into a slot; the reader copies the
 * slot into a private buffer and folds it into a checksum (the same fold as
 * bench.rs). Then an 8-byte spin ping-pong. Prints medians of 5 runs.
 * Not part of any lesson: a yardstick for the "at least 80% of C" target. */
#define _GNU_SOURCE
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (64 * 1024)
#define SLOTS 16
#define CHUNKS 4096u
#define TRIPS 20000u
#define RUNS 5

struct counter { _Alignas(64) _Atomic uint32_t value; _Atomic uint64_t msg; };
struct header {
    struct counter head, tail;
    _Alignas(64) _Atomic uint32_t ready;
    _Atomic uint64_t end_ns, checksum;
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    if (sched_setaffinity(0, sizeof s, &s) == -1) { perror("sched_setaffinity"); _exit(1); }
}

static void stamp(unsigned char *b, uint64_t seq) {
    uint64_t n = ~seq;
    memcpy(b, &seq, 8);
    memcpy(b + CHUNK - 8, &n, 8);
}

static uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static uint64_t fold(uint64_t sum, const unsigned char *b) {
    uint64_t a, m, z;
    memcpy(&a, b, 8);
    memcpy(&m, b + CHUNK / 2, 8);
    memcpy(&z, b + CHUNK - 8, 8);
    return (rotl(sum, 7) ^ a) * 0x9e3779b97f4a7c15ull + (m ^ rotl(z, 29));
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v) { qsort(v, RUNS, sizeof *v, cmp); return v[RUNS / 2]; }

int main(void) {
    size_t len = 4096 + SLOTS * (size_t)CHUNK;
    unsigned char *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) { perror("mmap"); return 1; }
    memset(base, 0, len);
    struct header *h = (struct header *)base;
    unsigned char *slots = base + 4096;
    unsigned char *hot = malloc(CHUNK), *priv = malloc(CHUNK);
    for (size_t i = 0; i < CHUNK; i++) hot[i] = (unsigned char)(i * 7 + 3);
    memset(priv, 0, CHUNK);
    double gbps[RUNS], us[RUNS];
    pin(0);

    for (int latency = 0; latency < 2; latency++) {
        for (int r = 0; r < RUNS; r++) {
            memset(base, 0, 4096);
            pid_t pid = fork();
            if (pid == -1) { perror("fork"); return 1; }
            if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                pin(1);
                memset(priv, 0, CHUNK);
                atomic_store_explicit(&h->ready, 1, memory_order_release);
                if (!latency) {
                    uint64_t sum = 0;
                    for (uint32_t seq = 0; seq < CHUNKS; seq++) {
                        while (atomic_load_explicit(&h->head.value, memory_order_acquire) == seq)
                            __builtin_ia32_pause();
                        memcpy(priv, slots + (size_t)(seq % SLOTS) * CHUNK, CHUNK);
                        atomic_store_explicit(&h->tail.value, seq + 1, memory_order_release);
                        sum = fold(sum, priv);
                    }
                    atomic_store(&h->end_ns, now_ns());
                    atomic_store(&h->checksum, sum);
                } else {
                    for (uint32_t i = 0; i < TRIPS; i++) {
                        while (atomic_load_explicit(&h->head.value, memory_order_acquire) != i + 1)
                            __builtin_ia32_pause();
                        uint64_t m = atomic_load_explicit(&h->head.msg, memory_order_relaxed);
                        atomic_store_explicit(&h->tail.msg, m + 1, memory_order_relaxed);
                        atomic_store_explicit(&h->tail.value, i + 1, memory_order_release);
                    }
                }
                _exit(0);
            }
            while (!atomic_load_explicit(&h->ready, memory_order_acquire)) sched_yield();
            uint64_t t0 = now_ns();
            if (!latency) {
                for (uint32_t seq = 0; seq < CHUNKS; seq++) {
                    stamp(hot, seq);
                    while (seq - atomic_load_explicit(&h->tail.value, memory_order_acquire) >= SLOTS)
                        __builtin_ia32_pause();
                    memcpy(slots + (size_t)(seq % SLOTS) * CHUNK, hot, CHUNK);
                    atomic_store_explicit(&h->head.value, seq + 1, memory_order_release);
                }
            } else {
                for (uint32_t i = 0; i < TRIPS; i++) {
                    atomic_store_explicit(&h->head.msg, i + 1, memory_order_relaxed);
                    atomic_store_explicit(&h->head.value, i + 1, memory_order_release);
                    while (atomic_load_explicit(&h->tail.value, memory_order_acquire) != i + 1)
                        __builtin_ia32_pause();
                    if (atomic_load_explicit(&h->tail.msg, memory_order_relaxed) != i + 2) {
                        fprintf(stderr, "bad reply\n");
                        return 1;
                    }
                }
                us[r] = (double)(now_ns() - t0) / 1e3 / TRIPS;
            }
            int status;
            waitpid(pid, &status, 0);
            if (!latency) {
                uint64_t expect = 0;
                for (uint32_t seq = 0; seq < CHUNKS; seq++) { stamp(hot, seq); expect = fold(expect, hot); }
                if (atomic_load(&h->checksum) != expect) { fprintf(stderr, "checksum mismatch\n"); return 1; }
                gbps[r] = (double)CHUNKS * CHUNK / (double)(atomic_load(&h->end_ns) - t0);
            }
        }
    }
    printf("C ring, spin, cross-cpu: throughput %.1f GB/s, round trip %.3f us (medians of %d)\n",
           median(gbps), median(us), RUNS);
    munmap(base, len);
    return 0;
}
