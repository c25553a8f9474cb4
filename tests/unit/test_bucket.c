/*
 * test_bucket — the token bucket on a fake clock: the rate holds, the burst caps what idle time
 * saves, debt makes the next piece wait, and 0 means unlimited.
 */
#include "sync/bucket.h"

#include "tests/unit/testutil.h"

#define SEC 1000000000LL

static void test_unlimited(void)
{
	struct bucket b;

	bucket_init(&b, 0, 0.1, 0);
	bucket_take(&b, 1u << 30);
	CHECK(bucket_allows(&b));
	CHECK_EQ_INT(bucket_wait_ns(&b), 0);
}

static void test_rate_holds(void)
{
	struct bucket b;
	int64_t now = 5 * SEC;
	uint64_t moved = 0;

	/* 1 MB/s; pieces of 16 KiB taken whenever allowed, for 10 simulated seconds. */
	bucket_init(&b, 1e6, 0.1, now);
	for (int64_t t = now; t < now + 10 * SEC; t += SEC / 1000) {
		bucket_refill(&b, t);
		while (bucket_allows(&b)) {
			bucket_take(&b, 16384);
			moved += 16384;
		}
	}
	/* The burst (0.1 s) plus ten seconds, give or take one piece. */
	CHECK(moved >= 10 * 1000000 && moved <= 10 * 1000000 + 100000 + 2 * 16384);
}

static void test_burst_caps_idle_savings(void)
{
	struct bucket b;

	bucket_init(&b, 1e6, 0.1, 0);
	bucket_refill(&b, 60 * SEC); /* a minute idle saves only the burst */
	bucket_take(&b, 100000);
	CHECK(!bucket_allows(&b) || b.tokens < 1);
	bucket_take(&b, 500000); /* into debt: half a second to wait */
	CHECK(!bucket_allows(&b));
	CHECK(bucket_wait_ns(&b) > SEC / 2 - SEC / 100 &&
	      bucket_wait_ns(&b) <= SEC / 2 + SEC / 100);
	bucket_refill(&b, 60 * SEC + SEC / 2 + SEC / 100);
	CHECK(bucket_allows(&b));
}

static void test_units(void)
{
	CHECK(bucket_mbps_to_bytes(8) == 1e6);
	CHECK(bucket_mbps_to_bytes(0) == 0);
	CHECK(bucket_mbps_to_bytes(-3) == 0);
}

TEST_MAIN(TEST(test_unlimited), TEST(test_rate_holds), TEST(test_burst_caps_idle_savings),
	  TEST(test_units))
