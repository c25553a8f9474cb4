/*
 * bucket — a token bucket: a rate in bytes per second with a small burst.
 *
 * Tokens accrue at the rate up to the burst; a transfer takes the bytes it moved, and may take
 * more than there is (the bucket goes into debt), so a piece bigger than the burst still passes
 * and the rate holds on average. A rate of 0 means unlimited. Pure arithmetic on a clock the
 * caller passes in; the caller serialises access (the fetch thread owns its buckets).
 */
#ifndef MESHFS_BUCKET_H
#define MESHFS_BUCKET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bucket {
	double rate;		/* bytes per second; 0 = unlimited */
	double burst;		/* most tokens kept */
	double tokens;		/* may be negative (debt) */
	int64_t last_ns;	/* when tokens were last added */
};

/* A bucket of @rate bytes/s (0 = unlimited) holding @burst_s seconds' worth, full at @now_ns. */
void bucket_init(struct bucket *b, double rate, double burst_s, int64_t now_ns);

/* Adds what accrued since the last call. */
void bucket_refill(struct bucket *b, int64_t now_ns);

/* Whether a transfer may move bytes now: unlimited, or no debt. */
bool bucket_allows(const struct bucket *b);

/* Takes @n bytes (into debt if need be). */
void bucket_take(struct bucket *b, size_t n);

/* Nanoseconds until bucket_allows() turns true (0 if it is). */
int64_t bucket_wait_ns(const struct bucket *b);

/* Megabits per second (the config's unit) to bytes per second. */
double bucket_mbps_to_bytes(double mbps);

#endif
