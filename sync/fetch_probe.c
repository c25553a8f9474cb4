/*
 * fetch_probe — the fetcher's probes: a reader's few 64 KiB blocks, verified against the block
 * hashes that come with them, so the read is answered before its whole 4 MiB chunk is here.
 *
 * A read at a place the version is not being read in order, where no chunk is present or on
 * its way, gets a probe: GET /v1/files with a Range of the blocks it covers and
 * X-Meshfs-Want-Blocks; the answer carries X-Meshfs-Blocks (docs/protocol.md). The bytes stay
 * in memory; once every block matches its hash, the parked reads inside the probe are answered
 * with copies of them. The chunk is still fetched, verified and cached as usual. Concurrent
 * reads share a probe that covers them. A source that sends no block hashes is not probed again
 * for that version; one that sends a block not matching its hash is dropped like a bad chunk.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sync/fetch_int.h"
#include "sync/log.h"
#include "sync/util.h"

/* Keeps the X-Meshfs-Blocks header of a probe's answer. */
size_t fetch_probe_header(char *data, size_t size, size_t nmemb, void *arg)
{
	static const char name[] = "x-meshfs-blocks:";
	struct xfer *x = arg;
	size_t n = size * nmemb, vlen;
	const char *v;

	if (n <= sizeof(name) - 1 || strncasecmp(data, name, sizeof(name) - 1) != 0)
		return n;
	v = data + sizeof(name) - 1;
	vlen = n - (sizeof(name) - 1);
	while (vlen && (*v == ' ' || *v == '\t')) {
		v++;
		vlen--;
	}
	while (vlen && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' || v[vlen - 1] == ' '))
		vlen--;
	free(x->blocks);
	x->blocks = strndup(v, vlen);
	return x->blocks ? n : 0;
}

/* Whether an in-flight probe of @ff covers [@off, @off + @len). Lock held. */
static bool probe_covers(const struct fetch_file *ff, uint64_t off, uint64_t len)
{
	for (int i = 0; i < ff->n_probes; i++)
		if (ff->probes[i].off <= off && off + len <= ff->probes[i].off + ff->probes[i].len)
			return true;
	return false;
}

/* Starts a probe for each parked read that wants one and has none covering it. Lock held. */
bool fetch_start_probes_locked(struct fetch *f)
{
	bool started = false;

	for (struct fetch_file *ff = f->files; ff; ff = ff->next) {
		for (struct waiter *w = ff->waiters; w; w = w->next) {
			struct probe_range pr;
			uint64_t end;
			int host;

			if (!w->probe)
				continue;
			if (ff->n_probes >= FETCH_MAX_PROBES && !probe_covers(ff, w->off, w->len))
				continue; /* a later round, if its chunk has not come first */
			w->probe = false;
			if (probe_covers(ff, w->off, w->len) ||
			    !fetch_chunks_absent(ff, w->off, w->len))
				continue;
			pr.off = w->off / HASH_BLOCK_SIZE * HASH_BLOCK_SIZE;
			end = (w->off + w->len + HASH_BLOCK_SIZE - 1) / HASH_BLOCK_SIZE *
			      HASH_BLOCK_SIZE;
			pr.len = (end > ff->size ? ff->size : end) - pr.off;
			host = fetch_pick_source(f, ff, ff->no_probe, pr.len, NULL);
			if (host >= 0 &&
			    fetch_xfer_start(f, ff, host, XFER_PROBE, &pr, false, false) == 0)
				started = true;
			/* No source, or no memory: the read waits for its chunk, which says why. */
		}
	}
	return started;
}

/*
 * Checks the probe @x received against the block hashes that came with it. Returns 0 when
 * every block matches, -ENODATA when the source sent no (usable) block hashes, -EBADMSG when a
 * block does not match its hash.
 */
static int probe_verify(struct xfer *x)
{
	uint64_t nb = (x->probe_len + HASH_BLOCK_SIZE - 1) / HASH_BLOCK_SIZE;
	unsigned long long bsize, first;
	const char *p;
	int used = 0;

	if (!x->blocks || sscanf(x->blocks, "%llu %llu %n", &bsize, &first, &used) != 2 ||
	    !used || bsize != HASH_BLOCK_SIZE || first != x->probe_off / HASH_BLOCK_SIZE)
		return -ENODATA;
	p = x->blocks + used;
	for (uint64_t i = 0; i < nb; i++) {
		uint64_t at = i * HASH_BLOCK_SIZE;
		size_t n = (size_t)(x->probe_len - at < HASH_BLOCK_SIZE ? x->probe_len - at
									 : HASH_BLOCK_SIZE);
		char text[HASH_STR_LEN];
		struct hash128 want, got;

		if (strlen(p) < HASH_STR_LEN - 1)
			return -ENODATA;
		memcpy(text, p, HASH_STR_LEN - 1);
		text[HASH_STR_LEN - 1] = '\0';
		p += HASH_STR_LEN - 1;
		if (hash_parse(text, &want) < 0 || *p != (i + 1 < nb ? ',' : '\0'))
			return -ENODATA;
		p += i + 1 < nb;
		got = hash_buf(x->buf + at, n);
		if (!hash_equal(&got, &want))
			return -EBADMSG;
	}
	return 0;
}

/*
 * Handles a finished probe: on success answers every parked read inside it from its bytes.
 * A probe that failed only means its reads wait for their chunks; one with a bad block drops
 * the source. Called without the lock; takes it.
 */
void fetch_probe_done(struct fetch *f, struct xfer *x, CURLcode rc, struct completion **done)
{
	struct fetch_file *ff = x->ff;
	const char *host = f->cfg->hosts[x->host].name;
	long status = 0;
	int64_t now;
	int ret;

	curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
	if (rc != CURLE_OK || status != 206 || x->len != x->probe_len)
		ret = -EIO;
	else
		ret = probe_verify(x);
	if (ret == -EBADMSG) {
		log_msg(LOG_WARNING,
			"fetch %s/%s: %s served a corrupt block in %" PRIu64 "+%" PRIu64,
			ff->category, ff->path, host, x->probe_off, x->probe_len);
		if (f->peers)
			peers_record_transfer(f->peers, (size_t)x->host, 0, 0, -EIO);
	}

	pthread_mutex_lock(&f->lock);
	ff->inflight--;
	f->active--;
	for (int i = 0; i < ff->n_probes; i++) {
		if (ff->probes[i].off == x->probe_off && ff->probes[i].len == x->probe_len) {
			ff->probes[i] = ff->probes[--ff->n_probes];
			break;
		}
	}
	if (ret == -ENODATA)
		ff->no_probe |= (uint64_t)1 << x->host;
	if (ret == -EBADMSG) {
		ff->dropped |= (uint64_t)1 << x->host;
		fetch_file_error(ff, "%s served a corrupt block", host);
	}
	for (struct waiter **pp = &ff->waiters; ret == 0 && *pp;) {
		struct waiter *w = *pp;

		if (w->off < x->probe_off || w->off + w->len > x->probe_off + x->probe_len) {
			pp = &w->next;
			continue;
		}
		*pp = w->next;
		if (!fetch_answer_waiter(done, w, 0, -1, x->buf + (w->off - x->probe_off))) {
			*pp = w; /* no memory: its chunk answers it */
			pp = &w->next;
			continue;
		}
		/* At most FETCH_QUIET_NS in every FETCH_QUIET_NS + FETCH_QUIET_GAP_NS: a reader
		 * answered again and again must not hold background work off for good. */
		now = mono_ns();
		if (now >= f->quiet_until + FETCH_QUIET_GAP_NS)
			f->quiet_until = now + FETCH_QUIET_NS;
	}
	pthread_mutex_unlock(&f->lock);
}
