/*
 * test_circuit — the circuit breaker's state machine on a fake clock, and its use by peers.c.
 *
 * Every transition (closed -> open after N failures in a row, open -> half-open once the wait
 * is over, half-open -> closed on success, half-open -> open on failure with a doubled wait),
 * the backoff growth and its cap, the jitter bounds, the single half-open probe (also with
 * many threads asking at once), a lost probe (timeout, abandon), hints from the host
 * (expedite), results that arrive while open, and parameters out of range.
 *
 * Then the peers thread with one host on a port where nothing listens (so that every request
 * to it fails at once and counts in its status): how fetch results reported through
 * peers_record_transfer() feed the circuit, peers_allow(), the status fields, and that an open
 * circuit means no pull and no announcement until the timed probe (which fails and doubles the
 * wait). The end-to-end test (tests/e2e/test_circuits.py) shows the rest on real nodes.
 */
#include "sync/circuit.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sync/catalog.h"
#include "sync/log.h"
#include "sync/peers.h"
#include "sync/util.h"
#include "tests/unit/logcapture.h"
#include "tests/unit/deadport.h"
#include "tests/unit/testutil.h"

#define SEC 1000000000LL
#define T0 (1000 * SEC) /* an arbitrary start on the fake clock */

/* A circuit with @threshold, @recovery_s, cap 16× and no jitter unless asked. */
/* A circuit with these parameters (a fixed seed, the rest default); aborts on failure. */
static struct circuit *make_with(unsigned threshold, int64_t recovery_s, unsigned jitter_pct,
				 int64_t hint_gap_ns)
{
	struct circuit_params p;
	struct circuit *c = NULL;

	circuit_params_default(&p);
	p.failure_threshold = threshold;
	p.recovery_ns = recovery_s * SEC;
	p.jitter_pct = jitter_pct;
	p.hint_gap_ns = hint_gap_ns;
	p.seed = 12345;
	if (circuit_new(&p, &c) != 0 || !c)
		abort();
	return c;
}

static struct circuit *make(unsigned threshold, int64_t recovery_s, unsigned jitter_pct)
{
	return make_with(threshold, recovery_s, jitter_pct, CIRCUIT_DEFAULT_HINT_GAP_NS);
}

static struct circuit_info info(struct circuit *c)
{
	struct circuit_info i;

	circuit_get(c, &i);
	return i;
}

/* Fails @c @n times at @now; returns how many of those calls reported opening it. */
static int fail_n(struct circuit *c, int n, int64_t now)
{
	int opened = 0;

	for (int i = 0; i < n; i++)
		opened += circuit_failure(c, now) ? 1 : 0;
	return opened;
}

static void test_params(void)
{
	struct circuit_params p, bad;
	struct circuit *c = NULL;

	circuit_params_default(&p);
	CHECK_EQ_INT(p.failure_threshold, 5);
	CHECK_EQ_INT(p.recovery_ns, 60 * SEC);
	CHECK_EQ_INT(p.max_factor, 16);
	CHECK_EQ_INT(p.jitter_pct, 10);
	CHECK_EQ_INT(p.probe_timeout_ns, 0);
	CHECK_EQ_INT(p.hint_gap_ns, 2 * SEC);

	CHECK_EQ_INT(circuit_new(&p, &c), 0);
	CHECK(c != NULL);
	CHECK_EQ_INT(circuit_state(c), CIRCUIT_CLOSED);
	CHECK_EQ_INT(info(c).opens, 0);
	CHECK_EQ_INT(info(c).retry_at, 0);
	circuit_free(c);
	circuit_free(NULL);

	c = NULL;
	CHECK_EQ_INT(circuit_new(NULL, &c), -EINVAL);
	CHECK_EQ_INT(circuit_new(&p, NULL), -EINVAL);
	bad = p;
	bad.failure_threshold = 0;
	CHECK_EQ_INT(circuit_new(&bad, &c), -EINVAL);
	bad = p;
	bad.recovery_ns = 0;
	CHECK_EQ_INT(circuit_new(&bad, &c), -EINVAL);
	bad.recovery_ns = -SEC;
	CHECK_EQ_INT(circuit_new(&bad, &c), -EINVAL);
	bad = p;
	bad.max_factor = 0;
	CHECK_EQ_INT(circuit_new(&bad, &c), -EINVAL);
	bad = p;
	bad.jitter_pct = 51;
	CHECK_EQ_INT(circuit_new(&bad, &c), -EINVAL);
	bad = p;
	bad.probe_timeout_ns = -1;
	CHECK_EQ_INT(circuit_new(&bad, &c), -EINVAL);
	bad = p;
	bad.hint_gap_ns = -1;
	CHECK_EQ_INT(circuit_new(&bad, &c), -EINVAL);
	CHECK(c == NULL);

	CHECK_EQ_STR(circuit_state_name(CIRCUIT_CLOSED), "closed");
	CHECK_EQ_STR(circuit_state_name(CIRCUIT_OPEN), "open");
	CHECK_EQ_STR(circuit_state_name(CIRCUIT_HALF_OPEN), "half-open");
	CHECK_EQ_STR(circuit_state_name((enum circuit_state)42), "?");
}

/* closed -> open only after threshold failures *in a row*. */
static void test_closed_to_open(void)
{
	struct circuit *c = make(3, 10, 0);
	int64_t now = T0;

	CHECK(circuit_allow(c, now));
	CHECK(!circuit_failure(c, now));
	CHECK(!circuit_failure(c, now));
	CHECK_EQ_INT(info(c).failures, 2);
	/* A success in between starts the count over. */
	CHECK(!circuit_success(c, now));
	CHECK_EQ_INT(info(c).failures, 0);
	CHECK(!circuit_failure(c, now));
	CHECK(!circuit_failure(c, now));
	CHECK_EQ_INT(circuit_state(c), CIRCUIT_CLOSED);
	CHECK(circuit_allow(c, now));
	now += SEC;
	CHECK(circuit_failure(c, now)); /* the third in a row opens it */
	CHECK_EQ_INT(circuit_state(c), CIRCUIT_OPEN);
	CHECK_EQ_INT(info(c).opens, 1);
	CHECK_EQ_INT(info(c).opened_at, now);
	CHECK_EQ_INT(info(c).retry_at, now + 10 * SEC);
	CHECK_EQ_INT(info(c).failed_probes, 0);
	CHECK(!circuit_allow(c, now));
	CHECK(!circuit_allow(c, now + 10 * SEC - 1));
	circuit_free(c);

	/* Threshold 1: the first failure opens it. */
	c = make(1, 1, 0);
	CHECK(circuit_failure(c, T0));
	CHECK_EQ_INT(circuit_state(c), CIRCUIT_OPEN);
	circuit_free(c);
}

/* open -> half-open lets exactly one probe through; its success closes the circuit. */
static void test_half_open_single_probe_then_closed(void)
{
	struct circuit *c = make(2, 5, 0);
	int64_t now = T0;

	CHECK_EQ_INT(fail_n(c, 2, now), 1);
	CHECK(!circuit_allow(c, now + 5 * SEC - 1));
	CHECK_EQ_INT(circuit_state(c), CIRCUIT_OPEN);
	now += 5 * SEC;
	CHECK(circuit_allow(c, now)); /* the probe */
	CHECK_EQ_INT(circuit_state(c), CIRCUIT_HALF_OPEN);
	CHECK_EQ_INT(info(c).retry_at, 0);
	/* Nobody else gets through while it is out, however long it takes (no timeout). */
	CHECK(!circuit_allow(c, now));
	CHECK(!circuit_allow(c, now + 1));
	CHECK(!circuit_allow(c, now + 3600 * SEC));
	CHECK_EQ_INT(circuit_state(c), CIRCUIT_HALF_OPEN);
	/* Hints do nothing while half-open. */
	CHECK(!circuit_expedite(c, now + 3600 * SEC));

	CHECK(circuit_success(c, now + SEC));
	CHECK_EQ_INT(circuit_state(c), CIRCUIT_CLOSED);
	CHECK_EQ_INT(info(c).failures, 0);
	CHECK_EQ_INT(info(c).failed_probes, 0);
	CHECK(circuit_allow(c, now + SEC));
	CHECK(circuit_allow(c, now + SEC));
	/* A second success changes nothing. */
	CHECK(!circuit_success(c, now + SEC));

	/* Closed again: it takes the full threshold to open it again, with the first wait. */
	now += 100 * SEC;
	CHECK(!circuit_failure(c, now));
	CHECK_EQ_INT(circuit_state(c), CIRCUIT_CLOSED);
	CHECK(circuit_failure(c, now));
	CHECK_EQ_INT(info(c).retry_at, now + 5 * SEC);
	CHECK_EQ_INT(info(c).opens, 2);
	circuit_free(c);
}

/* half-open -> open on failure, the wait doubling per failed probe up to 16×. */
static void test_backoff_growth_and_cap(void)
{
	static const int64_t want[] = { 2, 4, 8, 16, 16, 16, 16 };
	struct circuit *c = make(1, 3, 0);
	int64_t now = T0;
	struct circuit_info i;

	CHECK(circuit_failure(c, now));
	CHECK_EQ_INT(info(c).retry_at - now, 3 * SEC);
	for (size_t k = 0; k < sizeof(want) / sizeof(want[0]); k++) {
		now = info(c).retry_at;
		CHECK(!circuit_allow(c, now - 1));
		CHECK(circuit_allow(c, now));
		now += SEC / 2; /* the probe takes a while */
		CHECK(circuit_failure(c, now));
		i = info(c);
		CHECK_EQ_INT(i.state, CIRCUIT_OPEN);
		CHECK_EQ_INT(i.failed_probes, k + 1);
		CHECK_EQ_INT(i.opened_at, now);
		CHECK_EQ_INT(i.retry_at - now, want[k] * 3 * SEC);
		CHECK_EQ_INT(i.opens, 1); /* re-opening after a probe is not a new opening */
	}
	/* Results that arrive while open are ignored: no longer wait, no closing. */
	i = info(c);
	CHECK(!circuit_failure(c, now + 1));
	CHECK(!circuit_success(c, now + 1));
	CHECK_EQ_INT(info(c).retry_at, i.retry_at);
	CHECK_EQ_INT(info(c).failed_probes, i.failed_probes);
	CHECK_EQ_INT(circuit_state(c), CIRCUIT_OPEN);

	/* A successful probe forgets k: the next opening waits the first wait again. */
	now = i.retry_at;
	CHECK(circuit_allow(c, now));
	CHECK(circuit_success(c, now));
	CHECK(circuit_failure(c, now));
	CHECK_EQ_INT(info(c).retry_at - now, 3 * SEC);
	CHECK_EQ_INT(info(c).failed_probes, 0);
	circuit_free(c);

	/* Another cap. */
	{
		struct circuit_params p;

		circuit_params_default(&p);
		p.failure_threshold = 1;
		p.recovery_ns = SEC;
		p.max_factor = 3; /* not a power of two: 1, 2, 3, 3 */
		p.jitter_pct = 0;
		CHECK_EQ_INT(circuit_new(&p, &c), 0);
		now = T0;
		CHECK(circuit_failure(c, now));
		CHECK_EQ_INT(info(c).retry_at - now, SEC);
		for (int k = 1; k <= 4; k++) {
			now = info(c).retry_at;
			CHECK(circuit_allow(c, now));
			CHECK(circuit_failure(c, now));
			CHECK_EQ_INT(info(c).retry_at - now, (k < 2 ? (1 << k) : 3) * SEC);
		}
		circuit_free(c);
	}
}

/* ±10% jitter: every wait within bounds, and they do differ. */
static void test_jitter(void)
{
	struct circuit *c = make(1, 10, 10);
	int64_t now = T0, lo = INT64_MAX, hi = 0, w;

	for (int n = 0; n < 2000; n++) {
		CHECK(circuit_failure(c, now));
		w = info(c).retry_at - now;
		CHECK(w >= 9 * SEC && w <= 11 * SEC);
		lo = w < lo ? w : lo;
		hi = w > hi ? w : hi;
		/* back to closed through a successful probe */
		now = info(c).retry_at;
		CHECK(circuit_allow(c, now));
		CHECK(circuit_success(c, now));
	}
	printf("  first waits from %.3f s to %.3f s\n", (double)lo / SEC, (double)hi / SEC);
	CHECK(lo < 9.2 * SEC && hi > 10.8 * SEC);

	/* At the cap too: 16 × 10 s ± 10%. */
	CHECK(circuit_failure(c, now));
	for (int k = 0; k < 50; k++) {
		now = info(c).retry_at;
		CHECK(circuit_allow(c, now));
		CHECK(circuit_failure(c, now));
	}
	w = info(c).retry_at - now;
	CHECK(w >= 144 * SEC && w <= 176 * SEC);
	circuit_free(c);

	/* Two circuits with their own seeds do not wait in lockstep. */
	{
		struct circuit *a = make(1, 10, 10), *b;
		struct circuit_params p;

		circuit_params_default(&p);
		p.failure_threshold = 1;
		p.recovery_ns = 10 * SEC;
		p.seed = 0; /* one of its own */
		CHECK_EQ_INT(circuit_new(&p, &b), 0);
		CHECK(circuit_failure(a, T0));
		CHECK(circuit_failure(b, T0));
		CHECK(info(a).retry_at != info(b).retry_at);
		circuit_free(a);
		circuit_free(b);
	}
}

/* A probe whose outcome never comes: the timeout lets the next one go; abandon gives it back. */
static void test_lost_probe(void)
{
	struct circuit_params p;
	struct circuit *c;
	int64_t now = T0;

	circuit_params_default(&p);
	p.failure_threshold = 1;
	p.recovery_ns = 2 * SEC;
	p.jitter_pct = 0;
	p.probe_timeout_ns = 5 * SEC;
	CHECK_EQ_INT(circuit_new(&p, &c), 0);
	CHECK(circuit_failure(c, now));
	now += 2 * SEC;
	CHECK(circuit_allow(c, now));
	CHECK(!circuit_allow(c, now + 5 * SEC - 1));
	CHECK(circuit_allow(c, now + 5 * SEC)); /* presumed lost: a new probe */
	CHECK(!circuit_allow(c, now + 5 * SEC));
	CHECK(!circuit_allow(c, now + 10 * SEC - 1));
	CHECK_EQ_INT(circuit_state(c), CIRCUIT_HALF_OPEN);
	now += 6 * SEC;
	CHECK(circuit_failure(c, now));
	CHECK_EQ_INT(info(c).retry_at - now, 4 * SEC);
	circuit_free(c);

	/* Abandon: back to open, same k, a new wait; a no-op in any other state. */
	c = make(1, 2, 0);
	now = T0;
	circuit_abandon(c, now);
	CHECK_EQ_INT(circuit_state(c), CIRCUIT_CLOSED);
	CHECK(circuit_failure(c, now));
	now = info(c).retry_at;
	CHECK(circuit_allow(c, now));
	CHECK(circuit_failure(c, now)); /* k = 1: 4 s */
	now = info(c).retry_at;
	CHECK(circuit_allow(c, now));
	circuit_abandon(c, now);
	CHECK_EQ_INT(circuit_state(c), CIRCUIT_OPEN);
	CHECK_EQ_INT(info(c).failed_probes, 1);
	CHECK_EQ_INT(info(c).retry_at - now, 4 * SEC);
	CHECK(!circuit_allow(c, now + 4 * SEC - 1));
	circuit_abandon(c, now); /* open: nothing */
	CHECK_EQ_INT(info(c).retry_at - now, 4 * SEC);
	CHECK(circuit_allow(c, now + 4 * SEC));
	circuit_free(c);
}

/* A circuit without jitter whose hints are @gap_s apart. */
static struct circuit *make_gap(unsigned threshold, int64_t recovery_s, int64_t gap_s)
{
	return make_with(threshold, recovery_s, 0, gap_s * SEC);
}

/*
 * The host says it is back: the probe may go early, at most once per hint gap (3 s here),
 * however long the backed-off wait has grown.
 */
static void test_expedite(void)
{
	struct circuit *c = make_gap(1, 10, 3);
	int64_t now = T0, opened;

	CHECK(!circuit_expedite(c, now)); /* closed */
	CHECK(circuit_failure(c, now));
	for (int k = 0; k < 3; k++) { /* k = 3: wait 80 s */
		now = info(c).retry_at;
		CHECK(circuit_allow(c, now));
		CHECK(circuit_failure(c, now));
	}
	opened = now;
	CHECK_EQ_INT(info(c).retry_at - opened, 80 * SEC);
	/* Too early for a probe, but the wait is cut to one hint gap after the opening. */
	CHECK(!circuit_expedite(c, opened + SEC));
	CHECK_EQ_INT(info(c).retry_at, opened + 3 * SEC);
	CHECK_EQ_INT(circuit_state(c), CIRCUIT_OPEN);
	CHECK(!circuit_allow(c, opened + 3 * SEC - 1));
	/* From then on a hint lets the probe go at once. */
	CHECK(circuit_expedite(c, opened + 5 * SEC));
	CHECK_EQ_INT(info(c).retry_at, opened + 3 * SEC); /* never moved later */
	CHECK(circuit_allow(c, opened + 5 * SEC));
	CHECK(!circuit_expedite(c, opened + 5 * SEC)); /* half-open: nothing to cut */
	/* That probe failed too: k = 4, 160 s; the next hint waits another hint gap. */
	now = opened + 6 * SEC;
	CHECK(circuit_failure(c, now));
	CHECK_EQ_INT(info(c).retry_at - now, 160 * SEC);
	CHECK(!circuit_expedite(c, now + 2 * SEC));
	CHECK_EQ_INT(info(c).retry_at - now, 3 * SEC);
	CHECK(!circuit_allow(c, now + 2 * SEC));
	CHECK(circuit_allow(c, now + 3 * SEC));
	CHECK(circuit_success(c, now + 3 * SEC));
	CHECK_EQ_INT(circuit_state(c), CIRCUIT_CLOSED);
	CHECK(!circuit_expedite(c, now + 20 * SEC)); /* closed */
	circuit_free(c);

	/* A wait already shorter than that is left alone. */
	c = make_gap(1, 10, 30);
	CHECK(circuit_failure(c, T0));
	CHECK(!circuit_expedite(c, T0 + SEC));
	CHECK_EQ_INT(info(c).retry_at, T0 + 10 * SEC);
	CHECK(circuit_expedite(c, T0 + 10 * SEC));
	circuit_free(c);

	/* Gap 0: a hint lets the probe go at once, even right after the opening. */
	c = make_gap(1, 10, 0);
	CHECK(circuit_failure(c, T0));
	CHECK(circuit_expedite(c, T0));
	CHECK(circuit_allow(c, T0));
	circuit_free(c);
}

/* Huge recovery times and clocks near their end neither overflow nor wrap. */
static void test_no_overflow(void)
{
	struct circuit *c = make(1, INT32_MAX, 10);
	int64_t now = T0;

	CHECK(circuit_failure(c, now));
	CHECK(info(c).retry_at > now);
	for (int k = 0; k < 10; k++) {
		now = info(c).retry_at;
		CHECK(circuit_allow(c, now));
		CHECK(circuit_failure(c, now));
		CHECK(info(c).retry_at > now);
	}
	circuit_free(c);

	c = make(1, 60, 0);
	now = INT64_MAX - SEC;
	CHECK(circuit_failure(c, now));
	CHECK_EQ_INT(info(c).retry_at, INT64_MAX);
	CHECK(!circuit_allow(c, INT64_MAX - 1));
	circuit_free(c);
}

/* ---- threads: exactly one probe, however many ask at once ---- */

#define NTHREADS 8
#define ROUNDS 300

struct race {
	struct circuit *c;
	pthread_barrier_t start, done;
	int64_t now;		/* set before each round */
	int granted[NTHREADS];
};

static void *racer(void *arg)
{
	struct race *r = ((void **)arg)[0];
	int me = (int)(intptr_t)((void **)arg)[1];

	for (int round = 0; round < ROUNDS; round++) {
		pthread_barrier_wait(&r->start);
		if (circuit_allow(r->c, r->now))
			r->granted[me]++;
		/* half of them read the state meanwhile */
		if (me % 2)
			circuit_state(r->c);
		pthread_barrier_wait(&r->done);
	}
	return NULL;
}

static void test_threads_one_probe(void)
{
	static struct race r;
	pthread_t th[NTHREADS];
	void *args[NTHREADS][2];
	int total = 0;

	memset(&r, 0, sizeof(r));
	r.c = make(1, 1, 10);
	pthread_barrier_init(&r.start, NULL, NTHREADS + 1);
	pthread_barrier_init(&r.done, NULL, NTHREADS + 1);
	for (int i = 0; i < NTHREADS; i++) {
		args[i][0] = &r;
		args[i][1] = (void *)(intptr_t)i;
		if (pthread_create(&th[i], NULL, racer, args[i]) != 0)
			abort();
	}
	r.now = T0;
	circuit_failure(r.c, r.now);
	for (int round = 0; round < ROUNDS; round++) {
		int before = 0, after = 0;

		for (int i = 0; i < NTHREADS; i++)
			before += r.granted[i];
		r.now = info(r.c).retry_at; /* every thread asks just when the wait is over */
		pthread_barrier_wait(&r.start);
		pthread_barrier_wait(&r.done);
		for (int i = 0; i < NTHREADS; i++)
			after += r.granted[i];
		CHECK_EQ_INT(after - before, 1);
		CHECK_EQ_INT(circuit_state(r.c), CIRCUIT_HALF_OPEN);
		/* the probe fails; closing and re-opening every 10th round */
		if (round % 10 == 9) {
			CHECK(circuit_success(r.c, r.now));
			CHECK(circuit_failure(r.c, r.now));
		} else {
			CHECK(circuit_failure(r.c, r.now));
		}
	}
	for (int i = 0; i < NTHREADS; i++) {
		pthread_join(th[i], NULL);
		total += r.granted[i];
	}
	CHECK_EQ_INT(total, ROUNDS);
	pthread_barrier_destroy(&r.start);
	pthread_barrier_destroy(&r.done);
	circuit_free(r.c);
}

/* ---- peers.c: one host that refuses every connection ---- */

static char tmpdir[] = "/tmp/meshfs-test-circuit-XXXXXX";

static struct peer_status pst(struct peers *p, size_t idx)
{
	struct peer_status st;

	peers_status(p, idx, &st);
	return st;
}

/* Polls @cond every 5 ms until it holds or @ms pass; the value of the last evaluation. */
#define WAIT_FOR(cond, ms)                                                                  \
	({                                                                                  \
		int64_t wf_deadline = mono_ns() + (int64_t)(ms) * 1000000LL;                \
		bool wf_ok;                                                                 \
		while (!(wf_ok = (cond)) && mono_ns() < wf_deadline)                       \
			usleep(5000);                                                       \
		wf_ok;                                                                      \
	})

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void test_peers_integration(void)
{
	struct cfg_host hosts[2];
	struct mfs_config cfg;
	struct catalog *cat = NULL;
	struct peers *p = NULL;
	struct peer_status st;
	char db[300];
	int64_t t_open, took;

	CHECK(mkdtemp(tmpdir) != NULL);
	log_set_sink(capture_sink, NULL);
	snprintf(db, sizeof(db), "%s/catalog.db", tmpdir);
	if (catalog_open(db, &cat) != 0 || catalog_meta_set(cat, "node", "n0") != 0)
		abort();
	memset(hosts, 0, sizeof(hosts));
	memset(&cfg, 0, sizeof(cfg));
	hosts[0] = (struct cfg_host){ .name = (char *)"n0", .address = (char *)"127.0.0.1",
				      .data_server_port = 1, .active = true };
	hosts[1] = (struct cfg_host){ .name = (char *)"h1", .address = (char *)"127.0.0.1",
				      .data_server_port = dead_port(), .active = true };
	cfg.node = (char *)"n0";
	cfg.self = &hosts[0];
	cfg.hosts = hosts;
	cfg.n_hosts = 2;
	cfg.auto_sync.circuit_failure_threshold = 3;
	cfg.auto_sync.circuit_recovery_seconds = 2;

	/* One pull at start (the interval is long), refused: one failure, still closed. */
	CHECK_EQ_INT(peers_start(&cfg, cat, NULL, NULL, 60000, &p), 0);
	if (!p)
		abort();
	CHECK_EQ_INT(peers_wait_first_pull(p, 10000), 0);
	st = pst(p, 1);
	CHECK_EQ_INT(st.circuit, CIRCUIT_CLOSED);
	CHECK_EQ_INT(st.state, PEER_DEGRADED);
	CHECK_EQ_INT(st.errors, 1);
	CHECK(peers_allow(p, 1));

	/* Its pull failed: an announcement passes over it (it pulls us once back). */
	peers_announce(p, 3);
	usleep(300 * 1000);
	CHECK_EQ_INT(pst(p, 1).errors, 1);

	/* This node's own trouble counts for nothing; a host that answers "not found" resets the
	 * count, so two more failures do not open it yet. */
	peers_record_transfer(p, 1, 0, 0, -ENOSPC);
	peers_record_transfer(p, 1, 0, 0, -ECANCELED);
	CHECK_EQ_INT(pst(p, 1).errors, 1);
	peers_record_transfer(p, 1, 0, 0, -ENOENT);
	CHECK_EQ_INT(pst(p, 1).errors, 2);
	peers_record_transfer(p, 1, 0, 0, -ECONNRESET);
	peers_record_transfer(p, 1, 0, 0, -ETIMEDOUT);
	CHECK_EQ_INT(pst(p, 1).circuit, CIRCUIT_CLOSED);
	CHECK(peers_allow(p, 1));

	/* A corrupt chunk is the third failure in a row: open. */
	cap_reset();
	peers_record_transfer(p, 1, 0, 0, -EBADMSG);
	t_open = mono_ns();
	st = pst(p, 1);
	CHECK_EQ_INT(st.circuit, CIRCUIT_OPEN);
	CHECK_EQ_INT(st.state, PEER_DOWN);
	CHECK_EQ_INT(st.errors, 5);
	CHECK(st.probe_in_ms > 1500 && st.probe_in_ms <= 2200);
	CHECK(strstr(st.last_error, "Bad message") != NULL);
	CHECK(!peers_allow(p, 1));
	CHECK(cap_has("peer h1: circuit open after 3 failures in a row"));
	/* Hosts without a circuit: always allowed. */
	CHECK(peers_allow(p, 0));
	CHECK(peers_allow(p, 7));
	CHECK(peers_allow(NULL, 1));
	CHECK_EQ_INT(pst(p, 0).circuit, CIRCUIT_CLOSED);

	/* Open: a success reported now (a transfer started before) changes nothing; neither a
	 * "pull everyone", nor the host's own notification this early, nor an announcement sends
	 * it anything — each would have failed and counted. */
	peers_record_transfer(p, 1, 1 << 20, 1000000, 0);
	CHECK_EQ_INT(pst(p, 1).circuit, CIRCUIT_OPEN);
	peers_notify(p, NULL);
	peers_notify(p, "h1");
	peers_announce(p, 7);
	usleep(500 * 1000);
	st = pst(p, 1);
	CHECK_EQ_INT(st.consecutive_failures, 1);
	CHECK_EQ_INT(st.errors, 5);
	CHECK_EQ_INT(st.circuit, CIRCUIT_OPEN);

	/* The timed probe: the manifest pull, once the wait (2 s ± 10%) is over. It fails, and the
	 * wait doubles. */
	CHECK(WAIT_FOR(pst(p, 1).consecutive_failures == 2, 10000));
	took = (mono_ns() - t_open) / 1000000;
	printf("  probe %lld ms after the circuit opened\n", (long long)took);
	CHECK(took >= 1700);
	CHECK(WAIT_FOR(pst(p, 1).circuit == CIRCUIT_OPEN, 2000));
	st = pst(p, 1);
	CHECK_EQ_INT(st.errors, 6);
	CHECK(st.probe_in_ms > 3000 && st.probe_in_ms <= 4400);
	CHECK(cap_has("peer h1: probe 1 failed (connect to 127.0.0.1:"));
	CHECK(!peers_allow(p, 1));

	peers_stop(p);
	catalog_close(cat);
	log_set_sink(NULL, NULL);
	CHECK_EQ_INT(nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
}

TEST_MAIN(TEST(test_params), TEST(test_closed_to_open),
	  TEST(test_half_open_single_probe_then_closed),
	  TEST(test_backoff_growth_and_cap), TEST(test_jitter), TEST(test_lost_probe),
	  TEST(test_expedite), TEST(test_no_overflow), TEST(test_threads_one_probe),
	  TEST(test_peers_integration))
