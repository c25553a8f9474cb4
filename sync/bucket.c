/*
 * bucket — token buckets for bandwidth limits (see bucket.h).
 */
#include "sync/bucket.h"

void bucket_init(struct bucket *b, double rate, double burst_s, int64_t now_ns)
{
	b->rate = rate > 0 ? rate : 0;
	b->burst = b->rate * burst_s;
	b->tokens = b->burst;
	b->last_ns = now_ns;
}

void bucket_refill(struct bucket *b, int64_t now_ns)
{
	if (b->rate <= 0 || now_ns <= b->last_ns)
		return;
	b->tokens += b->rate * (double)(now_ns - b->last_ns) / 1e9;
	if (b->tokens > b->burst)
		b->tokens = b->burst;
	b->last_ns = now_ns;
}

bool bucket_allows(const struct bucket *b)
{
	return b->rate <= 0 || b->tokens > 0;
}

void bucket_take(struct bucket *b, size_t n)
{
	if (b->rate > 0)
		b->tokens -= (double)n;
}

int64_t bucket_wait_ns(const struct bucket *b)
{
	if (bucket_allows(b))
		return 0;
	return (int64_t)(-b->tokens / b->rate * 1e9) + 1;
}

double bucket_mbps_to_bytes(double mbps)
{
	return mbps > 0 ? mbps * 1e6 / 8 : 0;
}
