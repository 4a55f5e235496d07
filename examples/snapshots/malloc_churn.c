/* Allocator churn for examples/snapshots: glibc malloc with frees.
 *
 * Four threads (so glibc uses several arenas) each allocate 20000 blocks of random
 * size (16 B .. 32 KiB, log-uniform; 1 in 200 is 256 KiB .. 1 MiB, above the mmap
 * threshold), write every byte, then free a random 60% and reallocate a third of
 * those with new sizes.  Then the program prints "ready" and waits for stdin to
 * close.  Deterministic (fixed seeds).  Build: cc -O2 -pthread malloc_churn.c
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBLK 20000
#define NTHR 4

static uint64_t next(uint64_t *s) { /* xorshift64* */
	*s ^= *s >> 12; *s ^= *s << 25; *s ^= *s >> 27;
	return *s * 2685821657736338717ULL;
}

static size_t rsize(uint64_t *s) {
	if (next(s) % 200 == 0)
		return (256u << 10) + next(s) % (768u << 10);
	int bits = 4 + (int)(next(s) % 11); /* 16 B .. 32 KiB */
	return ((size_t)1 << bits) + next(s) % ((size_t)1 << bits);
}

static void *worker(void *arg) {
	uint64_t s = 0x9E3779B97F4A7C15ULL * (uintptr_t)arg + 1;
	char **p = calloc(NBLK, sizeof(*p));
	for (int i = 0; i < NBLK; i++) {
		size_t n = rsize(&s);
		p[i] = malloc(n);
		memset(p[i], 0x5a, n);
	}
	for (int i = 0; i < NBLK; i++)
		if (next(&s) % 10 < 6) {
			free(p[i]);
			p[i] = NULL;
		}
	for (int i = 0; i < NBLK; i++)
		if (!p[i] && next(&s) % 3 == 0) {
			size_t n = rsize(&s);
			p[i] = malloc(n);
			memset(p[i], 0xa5, n);
		}
	return p; /* kept alive: the blocks stay allocated */
}

int main(void) {
	pthread_t t[NTHR];
	for (long i = 0; i < NTHR; i++)
		pthread_create(&t[i], NULL, worker, (void *)i);
	for (int i = 0; i < NTHR; i++)
		pthread_join(t[i], NULL);
	printf("ready\n");
	fflush(stdout);
	char buf[16];
	while (fread(buf, 1, sizeof(buf), stdin) > 0)
		;
	return 0;
}
