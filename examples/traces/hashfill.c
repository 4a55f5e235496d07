/* A tiny workload for a Valgrind lackey trace: an open-addressing hash table of
 * 8-byte keys in a 16 MiB calloc'ed array (its own mmap), filled with 3000 keys at
 * hashed slots, then looked up again; and a small vector grown with realloc. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(void)
{
	size_t nslots = (16u << 20) / sizeof(uint64_t);
	uint64_t *table = calloc(nslots, sizeof(uint64_t));
	uint64_t *vec = NULL;
	size_t n = 0, cap = 0, hits = 0;

	if (!table)
		return 1;
	for (uint64_t k = 1; k <= 3000; k++) {
		uint64_t h = (k * 0x9E3779B97F4A7C15ull) % nslots;
		while (table[h])
			h = (h + 1) % nslots;
		table[h] = k;
		if (n == cap) {
			cap = cap ? 2 * cap : 64;
			vec = realloc(vec, cap * sizeof(*vec));
			if (!vec)
				return 1;
		}
		vec[n++] = h;
	}
	for (size_t i = 0; i < n; i++)
		hits += table[vec[i]] != 0;
	printf("%zu\n", hits);
	free(vec);
	free(table);
	return 0;
}
