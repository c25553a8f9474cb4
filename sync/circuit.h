/*
 * circuit — a circuit breaker for one (host, transport): stop asking a host that keeps failing,
 * and find out cheaply when it is back.
 *
 *   closed ──(failure_threshold failures in a row)──> open
 *   open ──(circuit_allow once the wait is over)──> half-open: exactly one probe goes out
 *   half-open ──(success)──> closed
 *   half-open ──(failure)──> open again, with the wait doubled
 *
 * The wait before the first probe is recovery_ns; each failed probe doubles it (recovery_ns ×
 * 2^k, k = consecutive failed probes), capped at max_factor × recovery_ns, and every wait gets
 * ±jitter_pct percent of random jitter so that nodes that lost the same host do not probe it
 * in lockstep. A success closes the circuit and forgets k.
 *
 * Pure logic: no I/O, no logging, no clock of its own — every call that needs the time takes
 * @now_ns from the caller (any monotonic nanosecond clock, the same one for every call), so
 * the tests drive it with a fake clock. Each circuit has its own mutex, so several threads
 * (the peers thread, the fetcher) share one; that mutex is a leaf: it may be taken while the
 * caller holds its own locks, and no function here calls out while holding it. Nothing is held
 * on return.
 */
#ifndef MESHFS_CIRCUIT_H
#define MESHFS_CIRCUIT_H

#include <stdbool.h>
#include <stdint.h>

enum circuit_state {
	CIRCUIT_CLOSED,
	CIRCUIT_OPEN,
	CIRCUIT_HALF_OPEN,
};

#define CIRCUIT_DEFAULT_THRESHOLD 5
#define CIRCUIT_DEFAULT_RECOVERY_NS (60LL * 1000000000LL)
#define CIRCUIT_DEFAULT_MAX_FACTOR 16
#define CIRCUIT_DEFAULT_JITTER_PCT 10
#define CIRCUIT_DEFAULT_HINT_GAP_NS (2LL * 1000000000LL)

struct circuit_params {
	unsigned failure_threshold;	/* consecutive failures that open it; >= 1 */
	int64_t recovery_ns;		/* wait before the first half-open probe; > 0 */
	unsigned max_factor;		/* the wait grows to at most this × recovery_ns; >= 1 */
	unsigned jitter_pct;		/* each wait is ± this percent at random; 0..50 */
	/*
	 * A half-open probe whose outcome is not reported within this is presumed lost and
	 * circuit_allow() lets another one through; 0 = never (every probe must be reported,
	 * or given back with circuit_abandon()).
	 */
	int64_t probe_timeout_ns;
	/*
	 * A hint from the host (circuit_expedite) lets the probe go no sooner than this after the
	 * circuit last (re)opened: what a host that keeps saying "I am back" while failing can
	 * cost. >= 0.
	 */
	int64_t hint_gap_ns;
	uint64_t seed;			/* of the jitter; 0 = one of its own */
};

/* Opaque; every field is protected by the circuit's own mutex. */
struct circuit;

/* What circuit_get() reports. Times are on the caller's clock. */
struct circuit_info {
	enum circuit_state state;
	uint32_t failures;		/* consecutive failures counted while closed */
	uint32_t failed_probes;		/* k: half-open probes that failed in a row */
	int64_t retry_at; /* open: when circuit_allow() lets a probe through; else 0 */
	int64_t opened_at;		/* when it last went (back) to open; 0 if never */
	uint64_t opens;			/* closed -> open transitions since it was made */
};

/*
 * Fills @p with the defaults above (threshold 5, recovery 60 s, cap 16×, ±10%, no timeout,
 * hints 2 s apart).
 */
void circuit_params_default(struct circuit_params *p);

/*
 * Makes a closed circuit. Returns 0 and *@out (free with circuit_free), -EINVAL when a
 * parameter is out of range, -ENOMEM.
 */
int circuit_new(const struct circuit_params *params, struct circuit **out);

/* Frees @c (NULL is fine). No other thread may be using it. */
void circuit_free(struct circuit *c);

/*
 * May a request go to the host now? Closed: true. Open: false until retry_at; from then the
 * first call moves it to half-open and returns true — that caller's request is the probe and
 * its outcome must be reported (circuit_success/circuit_failure, or circuit_abandon when it
 * never went out). Half-open: false while the probe is out (true again, as a new probe, once
 * probe_timeout_ns has passed without an outcome).
 */
bool circuit_allow(struct circuit *c, int64_t now_ns);

/*
 * A request to the host succeeded. Closed: the failure count restarts. Half-open: closes the
 * circuit (k forgotten). Open: ignored (a request that was in flight when it opened proves
 * little; only a probe closes it). Returns true when this call closed the circuit.
 */
bool circuit_success(struct circuit *c, int64_t now_ns);

/*
 * A request to the host failed. Closed: counts one; the failure_threshold-th in a row opens
 * the circuit with the first wait (recovery_ns, jittered). Half-open: the probe failed: open
 * again with k + 1 and the longer wait. Open: ignored. Returns true when this call opened it.
 */
bool circuit_failure(struct circuit *c, int64_t now_ns);

/*
 * The probe that circuit_allow() let through never reached the host (the caller failed on its
 * own side): half-open goes back to open with the same k and a new wait. Otherwise a no-op.
 */
void circuit_abandon(struct circuit *c, int64_t now_ns);

/*
 * The host said it is back (it sent us a request): an open circuit's wait is cut short to
 * hint_gap_ns after it last (re)opened, or to @now_ns if that is already past — never made
 * longer. So hints cost at most one probe per hint_gap_ns however long the backed-off wait
 * has grown, and one that comes too early is not lost. Returns true when a probe may go now
 * (circuit_allow will let it through); false when not open, or when the probe has to wait
 * until circuit_get()'s retry_at.
 */
bool circuit_expedite(struct circuit *c, int64_t now_ns);

/* The state now (an open circuit stays open until circuit_allow moves it). */
enum circuit_state circuit_state(struct circuit *c);

/* A snapshot of @c into *@out. */
void circuit_get(struct circuit *c, struct circuit_info *out);

/* "closed", "open" or "half-open" (the names of INTERFACE.md); "?" for anything else. */
const char *circuit_state_name(enum circuit_state s);

#endif
