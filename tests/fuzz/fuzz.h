/* Shared by the libFuzzer harnesses: the entry points' prototypes (the build warns on
 * missing ones) and CHECK, which aborts with the failed property so that libFuzzer
 * saves the input as a crash. A harness asserts properties (round trips, bounds,
 * agreement with an independent model), not only "no crash". */
#ifndef KMS_TESTS_FUZZ_H
#define KMS_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define CHECK(cond)                                                                        \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, \
				#cond);                                                    \
			abort();                                                           \
		}                                                                          \
	} while (0)

/* A heap copy of exactly n bytes (plus an optional NUL), so that ASan sees a read
 * past the end of the input as the overflow it is. */
static inline char *fuzz_dup(const uint8_t *data, size_t n, int nul)
{
	size_t sz = n + (nul ? 1 : 0);
	char *p = malloc(sz);

	if (p == NULL && sz == 0)
		p = malloc(1);
	if (p == NULL)
		abort();
	for (size_t i = 0; i < n; i++)
		p[i] = (char)data[i];
	if (nul)
		p[n] = '\0';
	return p;
}

#endif
