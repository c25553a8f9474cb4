/*
 * peers — what this node knows of the other hosts: their manifests and their health.
 *
 * A thread ("meshfs-peers") pulls every active host's manifest incrementally
 * (GET /v1/manifest?since=<last seq applied>, see docs/protocol.md) on a short interval and at
 * once when peers_notify() is called (a peer's POST /v1/notify). The response is parsed while it
 * streams (libcurl write callback, one JSON line at a time), every entry is validated (known
 * category, clean path, sane size, hash format) and a bad one is skipped with a log line naming
 * the host; valid entries are applied to the catalog in batches, each batch one transaction that
 * also moves the host's position, and reported through struct peers_ops. An unchanged host costs
 * one small request. A host whose seq went backwards (a new catalog there) is reset.
 *
 * Per host it keeps: state (up / degraded / down), last successful contact, consecutive
 * failures, error count, last error, and the throughput measured by fetches
 * (peers_record_transfer), which the fetcher uses to weigh sources.
 *
 * Each host also has a circuit breaker for its HTTP transport (sync/circuit.h; threshold and
 * recovery from auto_sync.circuit_failure_threshold / circuit_recovery_seconds). Manifest
 * pulls, announcements and the fetches reported through peers_record_transfer() feed it.
 * While it is open nothing is asked of the host: no pull, no announcement, and peers_allow()
 * tells the fetcher not to use it. Once the wait is over the peers thread probes the host with
 * the manifest pull itself; a success closes the circuit, a failure re-opens it for twice as
 * long (up to 16×). A notification from the host (it is back: every node says hello when its
 * data server starts) lets that probe go early, at most once per pull interval.
 *
 * Requests carry "Authorization: Bearer <token>" when the config has a token, and have
 * connect and low-speed timeouts, so a dead or stalled peer costs seconds, never a hang.
 */
#ifndef MESHFS_PEERS_H
#define MESHFS_PEERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sync/catalog.h"
#include "sync/circuit.h"
#include "sync/config.h"

struct peers;

/* Called on the peers thread, with no peers lock held. host_idx indexes cfg->hosts. */
struct peers_ops {
	void (*remote_put)(void *arg, size_t host_idx, size_t cat_idx, const struct cat_entry *e);
	void (*remote_delete)(void *arg, size_t host_idx, size_t cat_idx, const char *path);
	/* Every entry of the host is gone (it was reset). */
	void (*host_reset)(void *arg, size_t host_idx);
};

enum peer_state {
	PEER_UNKNOWN,	/* never contacted yet */
	PEER_UP,
	PEER_DEGRADED,	/* answered, but recent requests failed */
	PEER_DOWN,
};

struct peer_status {
	enum peer_state state;		/* PEER_DOWN whenever the circuit is not closed */
	enum circuit_state circuit;	/* of the host's HTTP transport */
	int64_t probe_in_ms;		/* circuit open: ms until the next probe may go; else 0 */
	int64_t last_seen;		/* unix seconds of the last successful request; 0 = never */
	int64_t last_seq;		/* position in its manifest */
	uint64_t errors; /* failed requests since start (pulls, announcements, fetches) */
	uint32_t consecutive_failures;	/* manifest pulls that failed in a row */
	double throughput_bps;		/* bytes/s measured by fetches; 0 = unknown */
	double rtt_s;			/* time to the first byte of its manifest pulls (EWMA) */
	bool room_known;		/* its manifest said how much it can still take: */
	uint64_t room;			/* bytes (its cache limit and free disk) */
	char last_error[256];
};

/*
 * Starts the thread for @cfg (this node = cfg->self; every other active host with an address
 * is pulled every @interval_ms, 0 = default 2000). Returns 0 and *out, or -errno.
 */
int peers_start(const struct mfs_config *cfg, struct catalog *cat, const struct peers_ops *ops,
		void *arg, int interval_ms, struct peers **out);
void peers_stop(struct peers *p);

/* Pull @host's manifest now (NULL: every host). Asynchronous. */
void peers_notify(struct peers *p, const char *host);

/*
 * Tell the peers that this node has published up to @seq (POST /v1/notify), in the
 * background: every peer that is up or not yet contacted (one that failed pulls it on its own
 * interval once it is back). Also the node's hello once its data server listens: a peer that
 * had given up on it (an open circuit from before it started) probes it at once then.
 */
void peers_announce(struct peers *p, int64_t seq);


/* A snapshot of what is known of host @host_idx (all zero, circuit closed, for a host that
 * is not pulled: this node, inactive hosts, hosts without an address). Takes p->lock. */
void peers_status(struct peers *p, size_t host_idx, struct peer_status *out);

/*
 * May the fetcher use @host_idx as a source now? True when its HTTP circuit is closed; false
 * while it is open or half-open (the peers thread owns the half-open probe, so this never
 * consumes it and may be called for every candidate as often as wanted). True for a host
 * that has no circuit (not pulled: this node, inactive hosts) and when @p is NULL. Cheap:
 * takes only the circuit's own leaf mutex, so it may be called with the caller's locks held.
 */
bool peers_allow(struct peers *p, size_t host_idx);

/*
 * A fetch from @host_idx moved @bytes in @ns nanoseconds (@err 0), or failed with @err
 * (-errno). Feeds the throughput estimate, the error count and the host's circuit:
 *   - 0 is a success;
 *   - -ENOENT and -ESTALE (the host answered: it no longer has that path or version) count
 *     as a success for the circuit, and as an error;
 *   - -ECANCELED, -ENOSPC, -EDQUOT, -ENOMEM (this node's side: stopping, cache full, memory)
 *     are neither: not an error of the host, not counted by the circuit;
 *   - anything else (refused, reset, timed out, stalled, HTTP errors, corrupt data — report
 *     a chunk that failed its hash as -EBADMSG or -EIO) is a failure.
 * A failure that opens the circuit is logged. Takes p->lock, never held on return.
 */
void peers_record_transfer(struct peers *p, size_t host_idx, uint64_t bytes, int64_t ns,
			   int err);

/* "http://address:port" of host @host_idx into @buf; -ENOENT if it has no address. */
int peers_base_url(const struct mfs_config *cfg, size_t host_idx, char *buf, size_t size);

/* Waits until every active host has been pulled once (or failed), at most @timeout_ms. */
int peers_wait_first_pull(struct peers *p, int timeout_ms);

#endif
