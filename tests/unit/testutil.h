/*
 * testutil — the few macros the C unit tests share: CHECK records a failure and goes on,
 * TEST_MAIN runs the listed test functions and prints "N passed, M failed".
 */
#ifndef MESHFS_TESTUTIL_H
#define MESHFS_TESTUTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tu_failed_checks;

#define CHECK(cond)                                                                         \
	do {                                                                                \
		if (!(cond)) {                                                              \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__,   \
				#cond);                                                     \
			tu_failed_checks++;                                                 \
		}                                                                           \
	} while (0)

#define CHECK_EQ_INT(a, b)                                                                  \
	do {                                                                                \
		long long tu_a = (long long)(a), tu_b = (long long)(b);                     \
		if (tu_a != tu_b) {                                                         \
			fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld != %lld)\n",  \
				__FILE__, __LINE__, #a, #b, tu_a, tu_b);                    \
			tu_failed_checks++;                                                 \
		}                                                                           \
	} while (0)

#define CHECK_EQ_STR(a, b)                                                                  \
	do {                                                                                \
		const char *tu_a = (a), *tu_b = (b);                                        \
		if (!tu_a || !tu_b || strcmp(tu_a, tu_b) != 0) {                            \
			fprintf(stderr, "%s:%d: CHECK failed: %s == %s (\"%s\" != \"%s\")\n", \
				__FILE__, __LINE__, #a, #b, tu_a ? tu_a : "(null)",         \
				tu_b ? tu_b : "(null)");                                    \
			tu_failed_checks++;                                                 \
		}                                                                           \
	} while (0)

struct tu_case {
	const char *name;
	void (*fn)(void);
};

#define TEST(fn) { #fn, fn }

static inline int tu_run(const struct tu_case *cases, size_t n)
{
	int passed = 0, failed = 0;

	for (size_t i = 0; i < n; i++) {
		int before = tu_failed_checks;

		cases[i].fn();
		if (tu_failed_checks == before) {
			passed++;
			printf("ok %s\n", cases[i].name);
		} else {
			failed++;
			printf("FAIL %s\n", cases[i].name);
		}
	}
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}

#define TEST_MAIN(...)                                                                      \
	int main(void)                                                                      \
	{                                                                                   \
		static const struct tu_case tu_cases[] = { __VA_ARGS__ };                   \
		return tu_run(tu_cases, sizeof(tu_cases) / sizeof(tu_cases[0]));            \
	}

#endif
