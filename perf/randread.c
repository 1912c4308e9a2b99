/* What random memory access costs on this machine, the way the dataplane's SA look-ahead
 * does it: batches of 32 random 2 KiB objects in a 512 MiB buffer (on transparent huge
 * pages where the kernel gives them), the first LINES cache lines of each prefetched for
 * the whole batch, then read. Prints objects and lines per second: the ceiling that SA
 * state far from the CPU puts on packets per second (see README, "Performance").
 *
 *     gcc -O2 -o /tmp/randread perf/randread.c && for n in 1 4 8 16; do /tmp/randread $n; done
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#define SIZE ((size_t)512 << 20)
#define OBJ 2048
#define BATCH 32

int main(int argc, char **argv)
{
	int lines = argc > 1 ? atoi(argv[1]) : 4;
	if (lines < 1 || lines > OBJ / 64) {
		fprintf(stderr, "usage: %s LINES (1 to %d: cache lines read per object)\n", argv[0], OBJ / 64);
		return 2;
	}
	char *buf = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	madvise(buf, SIZE, MADV_HUGEPAGE);
	for (size_t i = 0; i < SIZE; i += 4096)
		buf[i] = 1;
	size_t objects = 20000000 / lines / BATCH * BATCH;
	uint64_t x = 88172645463325252ULL, sum = 0;
	size_t idx[BATCH];
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (size_t r = 0; r < objects / BATCH; r++) {
		for (int j = 0; j < BATCH; j++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			idx[j] = (size_t)(x % (SIZE / OBJ)) * OBJ;
		}
		for (int j = 0; j < BATCH; j++)
			for (int l = 0; l < lines; l++)
				__builtin_prefetch(buf + idx[j] + l * 64, 0, 3);
		for (int j = 0; j < BATCH; j++)
			for (int l = 0; l < lines; l++)
				sum += (unsigned char)buf[idx[j] + l * 64];
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	printf("{\"lines_per_object\": %d, \"mobjects_per_s\": %.2f, \"mlines_per_s\": %.1f, \"ns_per_object\": %.1f, \"check\": %llu}\n",
	       lines, (double)objects / s / 1e6, (double)objects * lines / s / 1e6, s / (double)objects * 1e9,
	       (unsigned long long)sum);
	return 0;
}
