/*
 * circuit — per-(host, transport) circuit breaker (see circuit.h for the state machine).
 *
 * How it works: one small struct under its own mutex. The wait after the k-th failed probe in
 * a row is recovery_ns × min(2^k, max_factor) × (1 + u × jitter_pct / 100), u uniform in
 * [-1, 1) from a splitmix64 generator seeded per circuit, computed in double and clamped to
 * CIRCUIT_MAX_WAIT_NS so that no configuration (recovery_seconds is any positive int) can
 * overflow a time; retry_at = now + wait saturates at INT64_MAX. k keeps counting failed
 * probes but the factor stops at max_factor, so a host that stays down for weeks costs one
 * probe per capped wait.
 *
 * Results that arrive while open are ignored: they belong to requests that started before the
 * circuit opened, and counting them would extend the wait for a reason the breaker already
 * knows. In half-open any reported result decides (the probe's, or one that was in flight),
 * which only lets an outcome that really happened settle the probe a little early.
 */
#include "sync/circuit.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

/* The longest wait ever computed: 30 days (a config may ask for 2^31 s × 16). */
#define CIRCUIT_MAX_WAIT_NS (30LL * 86400 * 1000000000LL)
#define CIRCUIT_MAX_JITTER_PCT 50
#define CIRCUIT_MAX_K 1000000	/* failed probes counted; the factor is capped long before */

struct circuit {
	pthread_mutex_t lock;	/* a leaf: nothing else is taken while it is held */
	/* set at creation, read-only after: */
	uint32_t threshold;
	int64_t recovery_ns;
	uint32_t max_factor;
	uint32_t jitter_pct;
	int64_t probe_timeout_ns;
	int64_t hint_gap_ns;
	/* protected by lock: */
	enum circuit_state state;
	uint32_t failures;
	uint32_t failed_probes;	/* k */
	int64_t retry_at;	/* open */
	int64_t probe_at;	/* half-open: when the probe was let through */
	int64_t opened_at;
	uint64_t opens;
	uint64_t rng;
};

void circuit_params_default(struct circuit_params *p)
{
	*p = (struct circuit_params){
		.failure_threshold = CIRCUIT_DEFAULT_THRESHOLD,
		.recovery_ns = CIRCUIT_DEFAULT_RECOVERY_NS,
		.max_factor = CIRCUIT_DEFAULT_MAX_FACTOR,
		.jitter_pct = CIRCUIT_DEFAULT_JITTER_PCT,
		.probe_timeout_ns = 0,
		.hint_gap_ns = CIRCUIT_DEFAULT_HINT_GAP_NS,
		.seed = 0,
	};
}

int circuit_new(const struct circuit_params *params, struct circuit **out)
{
	struct circuit *c = NULL;
	int ret = -EINVAL;

	if (!params || !out || params->failure_threshold < 1 || params->recovery_ns <= 0 ||
	    params->max_factor < 1 || params->jitter_pct > CIRCUIT_MAX_JITTER_PCT ||
	    params->probe_timeout_ns < 0 || params->hint_gap_ns < 0)
		goto out;
	ret = -ENOMEM;
	c = calloc(1, sizeof(*c));
	if (!c)
		goto out;
	pthread_mutex_init(&c->lock, NULL);
	c->threshold = params->failure_threshold;
	c->recovery_ns = params->recovery_ns;
	c->max_factor = params->max_factor;
	c->jitter_pct = params->jitter_pct;
	c->probe_timeout_ns = params->probe_timeout_ns;
	c->hint_gap_ns = params->hint_gap_ns;
	c->state = CIRCUIT_CLOSED;
	/* Without a seed, the address keeps the circuits of one process apart (and ASLR those
	 * of different processes). */
	c->rng = params->seed ? params->seed : (uint64_t)(uintptr_t)c * 0x9e3779b97f4a7c15ULL;
	*out = c;
	ret = 0;
out:
	return ret;
}

void circuit_free(struct circuit *c)
{
	if (!c)
		return;
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/* splitmix64: small, fast, and good enough to spread probes. Lock held. */
static uint64_t next_random(struct circuit *c)
{
	uint64_t z = (c->rng += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* The wait before the next probe with c->failed_probes failed ones behind. Lock held. */
static int64_t next_wait(struct circuit *c)
{
	uint32_t k = c->failed_probes;
	uint64_t factor = k >= 32 ? UINT64_MAX : (uint64_t)1 << k;
	double wait, u;

	if (factor > c->max_factor)
		factor = c->max_factor;
	wait = (double)c->recovery_ns * (double)factor;
	if (c->jitter_pct) {
		/* 53 random bits -> [0, 1) -> [-1, 1) */
		u = (double)(next_random(c) >> 11) / (double)(1ULL << 53) * 2.0 - 1.0;
		wait *= 1.0 + u * (double)c->jitter_pct / 100.0;
	}
	if (wait > (double)CIRCUIT_MAX_WAIT_NS)
		wait = (double)CIRCUIT_MAX_WAIT_NS;
	return wait < 1 ? 1 : (int64_t)wait;
}

static int64_t add_sat(int64_t a, int64_t b)
{
	return a > INT64_MAX - b ? INT64_MAX : a + b;
}

/* Goes (back) to open at @now with the wait that k calls for. Lock held. */
static void to_open(struct circuit *c, int64_t now)
{
	c->state = CIRCUIT_OPEN;
	c->opened_at = now;
	c->retry_at = add_sat(now, next_wait(c));
	c->probe_at = 0;
}

bool circuit_allow(struct circuit *c, int64_t now_ns)
{
	bool ok = false;

	pthread_mutex_lock(&c->lock);
	switch (c->state) {
	case CIRCUIT_CLOSED:
		ok = true;
		break;
	case CIRCUIT_OPEN:
		if (now_ns >= c->retry_at) {
			c->state = CIRCUIT_HALF_OPEN;
			c->probe_at = now_ns;
			ok = true;
		}
		break;
	case CIRCUIT_HALF_OPEN:
		if (c->probe_timeout_ns > 0 && now_ns - c->probe_at >= c->probe_timeout_ns) {
			c->probe_at = now_ns; /* the last probe is lost: this one replaces it */
			ok = true;
		}
		break;
	}
	pthread_mutex_unlock(&c->lock);
	return ok;
}

bool circuit_success(struct circuit *c, int64_t now_ns)
{
	bool closed = false;

	(void)now_ns; /* part of the API for symmetry; a success needs no time */
	pthread_mutex_lock(&c->lock);
	switch (c->state) {
	case CIRCUIT_CLOSED:
		c->failures = 0;
		break;
	case CIRCUIT_HALF_OPEN:
		c->state = CIRCUIT_CLOSED;
		c->failures = 0;
		c->failed_probes = 0;
		c->retry_at = 0;
		c->probe_at = 0;
		closed = true;
		break;
	case CIRCUIT_OPEN:
		break;
	}
	pthread_mutex_unlock(&c->lock);
	return closed;
}

bool circuit_failure(struct circuit *c, int64_t now_ns)
{
	bool opened = false;

	pthread_mutex_lock(&c->lock);
	switch (c->state) {
	case CIRCUIT_CLOSED:
		if (c->failures < UINT32_MAX)
			c->failures++;
		if (c->failures >= c->threshold) {
			c->failed_probes = 0;
			c->opens++;
			to_open(c, now_ns);
			opened = true;
		}
		break;
	case CIRCUIT_HALF_OPEN:
		if (c->failed_probes < CIRCUIT_MAX_K)
			c->failed_probes++;
		to_open(c, now_ns);
		opened = true;
		break;
	case CIRCUIT_OPEN:
		break;
	}
	pthread_mutex_unlock(&c->lock);
	return opened;
}

void circuit_abandon(struct circuit *c, int64_t now_ns)
{
	pthread_mutex_lock(&c->lock);
	if (c->state == CIRCUIT_HALF_OPEN)
		to_open(c, now_ns);
	pthread_mutex_unlock(&c->lock);
}

bool circuit_expedite(struct circuit *c, int64_t now_ns)
{
	bool now_ok = false;

	int64_t earliest;

	pthread_mutex_lock(&c->lock);
	if (c->state == CIRCUIT_OPEN) {
		earliest = add_sat(c->opened_at, c->hint_gap_ns);
		if (earliest < now_ns)
			earliest = now_ns;
		if (earliest < c->retry_at)
			c->retry_at = earliest;
		now_ok = now_ns >= c->retry_at;
	}
	pthread_mutex_unlock(&c->lock);
	return now_ok;
}

enum circuit_state circuit_state(struct circuit *c)
{
	enum circuit_state s;

	pthread_mutex_lock(&c->lock);
	s = c->state;
	pthread_mutex_unlock(&c->lock);
	return s;
}

void circuit_get(struct circuit *c, struct circuit_info *out)
{
	pthread_mutex_lock(&c->lock);
	*out = (struct circuit_info){
		.state = c->state,
		.failures = c->failures,
		.failed_probes = c->failed_probes,
		.retry_at = c->state == CIRCUIT_OPEN ? c->retry_at : 0,
		.opened_at = c->opened_at,
		.opens = c->opens,
	};
	pthread_mutex_unlock(&c->lock);
}

const char *circuit_state_name(enum circuit_state s)
{
	switch (s) {
	case CIRCUIT_CLOSED:
		return "closed";
	case CIRCUIT_OPEN:
		return "open";
	case CIRCUIT_HALF_OPEN:
		return "half-open";
	}
	return "?";
}
