/*
 * fetch — on-demand and background fetching of other hosts' file versions (see fetch.h).
 *
 * Each version being read or completed has a struct fetch_file: its cache file, a state per
 * chunk (absent, in flight, present) and the priority it is wanted at, the sources that still
 * may serve it, and the parked reads. The fetch thread loops: it expires reads past their
 * deadline, starts transfers for the most wanted absent chunks (first the chunk hash list,
 * GET /v1/chunks, then chunks with GET /v1/files and a Range header), waits in
 * curl_multi_poll (woken by curl_multi_wakeup when a read parks), and handles what finished:
 * a chunk is verified against its hash, written to the cache, marked present, and every read
 * whose range is now complete is answered. All callbacks run with no lock held.
 *
 * A read at a place the version is not being read in order also gets a probe of its few
 * 64 KiB blocks, answered before its chunk is here: see fetch_probe.c. What a reader waits for
 * comes first in three more ways: an open touches neither disk nor catalog (the cache file of
 * a version not cached yet is made by the fetch thread before its first chunk or chunk list is
 * asked for, not while a probe of it is out unless probes have kept coming for 10 ms); a probe
 * goes out in the same loop round that started it; and for FETCH_QUIET_NS after a probe
 * answered a read, background work (making cache files, chunk lists, chunks not read,
 * whole-file checks) waits unless a reader is parked, so it does not take the CPU and the
 * source from the reader just answered.
 */
#include "sync/fetch.h"
#include "sync/fetch_int.h"

#include <curl/curl.h>
#include <errno.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sync/bucket.h"
#include "sync/hash.h"
#include "sync/log.h"
#include "sync/util.h"

/* ------------------------------------------------------------------ helpers */

size_t fetch_chunk_len(const struct fetch_file *ff, size_t idx)
{
	uint64_t start = (uint64_t)idx * HASH_CHUNK_SIZE;
	uint64_t end = start + HASH_CHUNK_SIZE;

	return (size_t)((end > ff->size ? ff->size : end) - start);
}

/* Whether no chunk that [@off, @off + @len) touches is present or on its way. Lock held. */
bool fetch_chunks_absent(const struct fetch_file *ff, uint64_t off, uint64_t len)
{
	for (uint64_t i = off / HASH_CHUNK_SIZE; i <= (off + len - 1) / HASH_CHUNK_SIZE; i++)
		if (ff->state[i] != CH_ABSENT)
			return false;
	return true;
}

/* Whether a reader wants one of chunks @first..@last now or next (read-ahead). Lock held. */
static bool chunks_read_wanted(const struct fetch_file *ff, size_t first, size_t last)
{
	for (size_t i = first; i <= last; i++)
		if (ff->want[i] >= FETCH_PRIO_AHEAD)
			return true;
	return false;
}

/* Records the last error of @ff (lock held) and in the cache, for user.meshfs.last_error. */
void fetch_file_error(struct fetch_file *ff, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(ff->last_error, sizeof(ff->last_error), fmt, ap);
	va_end(ap);
}

bool fetch_answer_waiter(struct completion **done, struct waiter *w, int err, int fd,
			 const void *buf)
{
	struct completion *c = calloc(1, sizeof(*c));

	if (c && buf) {
		c->buf = malloc((size_t)w->len);
		if (c->buf)
			memcpy(c->buf, buf, (size_t)w->len);
	}
	if (!c || (buf && !c->buf)) {
		free(c);
		return false;
	}
	c->done = w->done;
	c->cookie = w->cookie;
	c->err = err;
	c->fd = buf ? -1 : fd;
	c->off = w->off;
	c->len = (size_t)w->len;
	c->next = *done;
	*done = c;
	free(w);
	return true;
}

/* Moves every waiter of @ff whose range is present, or all of them with @err, to @done. */
static void collect_waiters(struct fetch_file *ff, int err, struct completion **done)
{
	struct waiter **pp = &ff->waiters;

	while (*pp) {
		struct waiter *w = *pp;

		if (!err && (!ff->cf || !cache_file_range_present(ff->cf, w->off, w->len))) {
			pp = &w->next;
			continue;
		}
		*pp = w->next;
		if (!fetch_answer_waiter(done, w, err, ff->cf ? cache_file_fd(ff->cf) : -1, NULL)) {
			/* Cannot defer it: the read would hang. Answer it from here. */
			w->done(w->cookie, -ENOMEM, -1, NULL, w->off, 0);
			free(w);
		}
	}
}

static void run_completions(struct completion *c)
{
	while (c) {
		struct completion *next = c->next;

		c->done(c->cookie, c->err, c->fd, c->buf, c->off, c->len);
		free(c->buf);
		free(c);
		c = next;
	}
}

/* Lowers the want of every chunk of @ff to nothing (it failed for good). Lock held. */
static void clear_want(struct fetch_file *ff)
{
	memset(ff->want, 0, ff->nchunks);
}

static bool file_wanted(const struct fetch_file *ff)
{
	for (size_t i = 0; i < ff->nchunks; i++)
		if (ff->want[i] && ff->state[i] == CH_ABSENT)
			return true;
	return false;
}

/*
 * When @ff's cache file is to be made (mono_ns): 0 = now, INT64_MAX = never (it has one, or
 * nothing of it is wanted), else when its probes' head start ends (see
 * next_to_create_locked). Lock held.
 */
static int64_t cache_file_due(const struct fetch_file *ff)
{
	if (ff->cf || !(ff->background || file_wanted(ff)))
		return INT64_MAX;
	return ff->n_probes ? ff->first_probe_ns + FETCH_PROBE_HEAD_NS : 0;
}

/* ------------------------------------------------------------------ files */

/* @ff's cache file, or NULL while it has none yet. Any thread, with or without the lock. */
static struct cache_file *file_cf(const struct fetch_file *ff)
{
	return __atomic_load_n(&ff->cf, __ATOMIC_ACQUIRE);
}

/* Takes @cf as @ff's cache file and what it holds as @ff's state. Lock held. */
static void file_set_cf_locked(struct fetch_file *ff, struct cache_file *cf)
{
	struct hash128 first;

	for (size_t i = 0; i < ff->nchunks; i++)
		if (cache_file_chunk_present(cf, i))
			ff->state[i] = CH_PRESENT;
	/* Chunk hashes kept from an earlier fetch (or a restart) need not be asked again. */
	ff->have_list = ff->nchunks == 0 || cache_file_chunk_hash(cf, 0, &first) == 0;
	ff->complete = cache_file_complete(cf);
	__atomic_store_n(&ff->cf, cf, __ATOMIC_RELEASE);
}

static void file_free(struct fetch_file *ff)
{
	if (ff->cf)
		cache_file_put(ff->cf);
	free(ff->state);
	free(ff->want);
	free(ff->category);
	free(ff->path);
	free(ff);
}

/* Drops one reference; the last one takes @ff out of the table. Lock held. */
static void file_unref_locked(struct fetch *f, struct fetch_file *ff)
{
	struct fetch_file **pp;

	if (--ff->refs > 0 || ff->inflight > 0)
		return;
	for (pp = &f->files; *pp; pp = &(*pp)->next) {
		if (*pp == ff) {
			*pp = ff->next;
			break;
		}
	}
	file_free(ff);
}

static struct fetch_file *file_find(struct fetch *f, const struct hash128 *hash)
{
	for (struct fetch_file *ff = f->files; ff; ff = ff->next)
		if (hash_equal(&ff->hash, hash))
			return ff;
	return NULL;
}

/* Finds or makes the fetch_file of @r with one more reference. Lock held. */
static int file_get_locked(struct fetch *f, const struct ns_remote *r, struct fetch_file **out)
{
	struct fetch_file *ff = file_find(f, &r->hash);
	const char *category = f->cfg->categories[r->cat_idx].name;
	struct cache_file *cf = NULL;
	int ret;

	if (ff) {
		ff->refs++;
		ff->sources |= r->sources;
		*out = ff;
		return 0;
	}
	ff = calloc(1, sizeof(*ff));
	if (!ff)
		return -ENOMEM;
	ff->f = f;
	ff->hash = r->hash;
	ff->size = r->size;
	ff->nchunks = (size_t)((r->size + HASH_CHUNK_SIZE - 1) / HASH_CHUNK_SIZE);
	ff->sources = r->sources;
	ff->category = strdup(category);
	ff->path = strdup(r->path);
	ff->state = calloc(ff->nchunks ? ff->nchunks : 1, 1);
	ff->want = calloc(ff->nchunks ? ff->nchunks : 1, 1);
	if (!ff->category || !ff->path || !ff->state || !ff->want) {
		ret = -ENOMEM;
		goto fail;
	}
	/* What is cached already is used at once; a new cache file waits for the fetch thread
	 * (make_cache_file). */
	ret = cache_file_find(f->cache, category, r->path, &r->hash, r->size, &cf);
	if (ret == 0)
		file_set_cf_locked(ff, cf);
	else if (ret != -ENOENT)
		goto fail;
	ff->refs = 1;
	ff->next = f->files;
	f->files = ff;
	*out = ff;
	return 0;
fail:
	file_free(ff);
	return ret;
}

int fetch_open(struct fetch *f, const struct ns_remote *r, struct fetch_file **out)
{
	int ret;

	if (r->cat_idx >= f->cfg->n_categories)
		return -EINVAL;
	pthread_mutex_lock(&f->lock);
	ret = file_get_locked(f, r, out);
	pthread_mutex_unlock(&f->lock);
	return ret;
}

void fetch_close(struct fetch_file *ff)
{
	struct fetch *f;

	if (!ff)
		return;
	f = ff->f;
	pthread_mutex_lock(&f->lock);
	file_unref_locked(f, ff);
	pthread_mutex_unlock(&f->lock);
}

/* Wants every absent chunk of @ff at least at @prio; the first time, the background
 * completion takes a reference so the version completes even after its readers leave. */
static void want_all_locked(struct fetch_file *ff, enum fetch_priority prio)
{
	for (size_t i = 0; i < ff->nchunks; i++)
		if (ff->state[i] != CH_PRESENT && ff->want[i] < prio)
			ff->want[i] = (uint8_t)prio;
	if (!ff->background && !ff->complete) {
		ff->background = true;
		ff->refs++;
	}
}

int fetch_read(struct fetch_file *ff, uint64_t off, size_t len, fetch_done_fn done,
	       void *cookie, int *fd)
{
	struct fetch *f = ff->f;
	struct cache_file *cf = file_cf(ff);
	struct waiter *w;
	size_t first, last;
	bool sequential;

	if (off >= ff->size || len == 0) {
		*fd = cf ? cache_file_fd(cf) : -1;
		return 0; /* EOF: an empty reply */
	}
	if (len > ff->size - off)
		len = (size_t)(ff->size - off);
	if (cf && cache_file_range_present(cf, off, len)) {
		*fd = cache_file_fd(cf);
		cache_file_touch(cf);
		pthread_mutex_lock(&f->lock);
		ff->last_read_end = off + len;
		pthread_mutex_unlock(&f->lock);
		return 0;
	}
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->off = off;
	w->len = len;
	w->deadline_ns = mono_ns() + (int64_t)f->cfg->auto_sync.read_deadline_seconds * 1000000000;
	w->done = done;
	w->cookie = cookie;
	first = (size_t)(off / HASH_CHUNK_SIZE);
	last = (size_t)((off + len - 1) / HASH_CHUNK_SIZE);

	pthread_mutex_lock(&f->lock);
	if (f->stop) {
		pthread_mutex_unlock(&f->lock);
		free(w);
		return -ESHUTDOWN;
	}
	/* Here meanwhile (a chunk came, the cache file was made): nothing to wait for. */
	if (ff->cf && cache_file_range_present(ff->cf, off, len)) {
		ff->last_read_end = off + len;
		*fd = cache_file_fd(ff->cf);
		pthread_mutex_unlock(&f->lock);
		free(w);
		return 0;
	}
	sequential = off == ff->last_read_end && off > 0;
	ff->last_read_end = off + len;
	/*
	 * A probe only where nothing is on its way yet: a chunk in flight comes soon enough, and
	 * so does one another reader wants while the version's cache file or chunk list is still
	 * being made or asked for (it starts right after).
	 */
	w->probe = !sequential && len <= FETCH_PROBE_MAX && fetch_chunks_absent(ff, off, len) &&
		   ((ff->cf && ff->have_list) || !chunks_read_wanted(ff, first, last));
	for (size_t i = first; i <= last; i++)
		ff->want[i] = FETCH_PRIO_READ;
	if (sequential)
		for (size_t i = last + 1; i <= last + FETCH_AHEAD_CHUNKS && i < ff->nchunks; i++)
			if (ff->want[i] < FETCH_PRIO_AHEAD)
				ff->want[i] = FETCH_PRIO_AHEAD;
	/* The rest of the version follows in the background. */
	want_all_locked(ff, FETCH_PRIO_BACKGROUND);
	w->next = ff->waiters;
	ff->waiters = w;
	pthread_mutex_unlock(&f->lock);
	curl_multi_wakeup(f->multi);
	return -EINPROGRESS;
}

int fetch_prefetch(struct fetch *f, const struct ns_remote *r, enum fetch_priority prio)
{
	return fetch_prefetch_avoiding(f, r, prio, 0);
}

int fetch_prefetch_avoiding(struct fetch *f, const struct ns_remote *r,
			    enum fetch_priority prio, uint64_t avoid)
{
	struct fetch_file *ff;
	int ret;

	pthread_mutex_lock(&f->lock);
	ret = file_get_locked(f, r, &ff);
	if (ret == 0) {
		ff->avoid |= avoid;
		want_all_locked(ff, prio);
		file_unref_locked(f, ff); /* the background reference keeps it */
	}
	pthread_mutex_unlock(&f->lock);
	if (ret == 0)
		curl_multi_wakeup(f->multi);
	return ret;
}

bool fetch_busy(struct fetch *f, const struct hash128 *hash)
{
	struct fetch_file *ff;
	bool busy = false;

	pthread_mutex_lock(&f->lock);
	ff = file_find(f, hash);
	if (ff)
		busy = ff->inflight > 0 || ff->list_inflight || ff->n_probes > 0 || file_wanted(ff);
	pthread_mutex_unlock(&f->lock);
	return busy;
}

size_t fetch_queue_len(struct fetch *f)
{
	size_t n = 0;

	if (!f)
		return 0;
	pthread_mutex_lock(&f->lock);
	for (struct fetch_file *ff = f->files; ff; ff = ff->next)
		if (!ff->complete && (ff->inflight > 0 || file_wanted(ff)))
			n++;
	pthread_mutex_unlock(&f->lock);
	return n;
}

bool fetch_last_error(struct fetch *f, const struct hash128 *hash, char *buf, size_t size)
{
	struct fetch_file *ff;
	bool found;

	pthread_mutex_lock(&f->lock);
	ff = file_find(f, hash);
	found = ff != NULL;
	if (ff)
		snprintf(buf, size, "%s", ff->last_error);
	pthread_mutex_unlock(&f->lock);
	return found;
}

/* ------------------------------------------------------------------ sources */

/*
 * The usable source (not in @exclude) for the next @bytes of @ff that should finish first: the
 * least round trip plus bytes in flight and asked over its measured throughput, an ephemeral
 * host's time counting 1.5x (a spot machine may go at any moment); or -1. With @busy, hosts
 * already running FETCH_MAX_PER_HOST chunk transfers are passed over, and *busy says whether
 * one was (then -1 means "later", not "nobody"). Lock held.
 */
int fetch_pick_source(struct fetch *f, struct fetch_file *ff, uint64_t exclude, uint64_t bytes,
		       bool *busy)
{
	uint64_t candidates = ff->sources & ~ff->dropped & ~exclude;
	double best_eta = 0;
	int best = -1;

	if (candidates & ~ff->avoid)
		candidates &= ~ff->avoid;

	for (int h = 0; h < 64 && (size_t)h < f->cfg->n_hosts; h++) {
		struct peer_status ps = { 0 };
		double bps, eta;

		if (!(candidates & ((uint64_t)1 << h)) || &f->cfg->hosts[h] == f->cfg->self ||
		    !f->cfg->hosts[h].address)
			continue;
		/* A host whose circuit is open is left alone, not dropped: it may come back. */
		if (f->peers && !peers_allow(f->peers, (size_t)h))
			continue;
		if (busy && f->host_chunks[h] >= FETCH_MAX_PER_HOST) {
			*busy = true;
			continue;
		}
		if (f->peers)
			peers_status(f->peers, (size_t)h, &ps);
		bps = ps.throughput_bps > 0 ? ps.throughput_bps : FETCH_DEFAULT_BPS;
		eta = ps.rtt_s + (double)(f->host_inflight[h] + bytes) / bps;
		/* A spot machine may go at any moment: asked when it is clearly the faster. */
		if (f->cfg->hosts[h].is_ephemeral)
			eta *= FETCH_EPHEMERAL_PENALTY;
		if (best < 0 || eta < best_eta) {
			best = h;
			best_eta = eta;
		}
	}
	return best;
}

/* ------------------------------------------------------------------ transfers */

/* Writes the staged bytes into the cache file at their place. 0 or -errno (kept in x). */
static int stage_flush(struct xfer *x)
{
	int ret = pwrite_full(x->fd, x->stage, x->staged, x->base + x->flushed);

	if (ret < 0) {
		x->write_err = ret;
		return ret;
	}
	x->flushed += x->staged;
	x->staged = 0;
	return 0;
}

/*
 * Charges @n received bytes of @x to the buckets; false (and @x marked paused) when @x must
 * wait for them to refill first. Fetch thread only.
 */
static bool xfer_charge(struct fetch *f, struct xfer *x, size_t n)
{
	struct bucket *host = &f->host_bw[x->host];

	if (x->limited) {
		int64_t now = mono_ns();

		bucket_refill(&f->all_bw, now);
		bucket_refill(host, now);
		if (!bucket_allows(&f->all_bw) || !bucket_allows(host)) {
			x->paused = true;
			f->n_paused++;
			return false;
		}
	}
	bucket_take(&f->all_bw, n);
	bucket_take(host, n);
	return true;
}

static size_t xfer_write(char *data, size_t size, size_t nmemb, void *arg)
{
	struct xfer *x = arg;
	size_t n = size * nmemb;

	if (x->chunk < XFER_PROBE) {
		if (x->len + n > x->cap)
			return 0; /* more than the range asked for: abort, the source is wrong */
		if (!xfer_charge(x->ff->f, x, n))
			return CURL_WRITEFUNC_PAUSE; /* handed again once resumed */
		hash_stream_update(x->hs, data, n);
		for (size_t done = 0; done < n;) {
			size_t take = n - done;

			if (take > FETCH_STAGE - x->staged)
				take = FETCH_STAGE - x->staged;
			memcpy(x->stage + x->staged, data + done, take);
			x->staged += take;
			done += take;
			if (x->staged == FETCH_STAGE && stage_flush(x) < 0)
				return 0;
		}
		x->len += n;
		return n;
	}
	if (x->len + n > x->cap) {
		if (x->chunk == XFER_PROBE || x->len + n > FETCH_MAX_CHUNK_LIST)
			return 0;
		size_t cap = (x->len + n) * 2;
		char *bigger = realloc(x->buf, cap);

		if (!bigger)
			return 0;
		x->buf = bigger;
		x->cap = cap;
	}
	memcpy(x->buf + x->len, data, n);
	x->len += n;
	return n;
}

/* Percent-encodes @path segment by segment into a new string. */
static char *url_path(CURL *easy, const char *category, const char *path)
{
	char *out = NULL, *copy = strdup(path), *save = NULL;
	char *cat = curl_easy_escape(easy, category, 0);
	size_t len = 0, cap;

	if (!copy || !cat)
		goto out;
	cap = strlen(cat) + 3 * strlen(path) + 2;
	out = malloc(cap);
	if (!out)
		goto out;
	len = (size_t)snprintf(out, cap, "%s", cat);
	for (char *seg = strtok_r(copy, "/", &save); seg; seg = strtok_r(NULL, "/", &save)) {
		char *e = curl_easy_escape(easy, seg, 0);

		if (!e) {
			free(out);
			out = NULL;
			goto out;
		}
		len += (size_t)snprintf(out + len, cap - len, "/%s", e);
		curl_free(e);
	}
out:
	curl_free(cat);
	free(copy);
	return out;
}

static void xfer_free(struct xfer *x)
{
	free(x->blocks);
	hash_stream_free(x->hs);
	free(x->stage);
	if (x->easy)
		curl_easy_cleanup(x->easy);
	curl_slist_free_all(x->headers);
	free(x->buf);
	free(x);
}

/*
 * Starts the transfer of chunk @chunk (XFER_LIST: the chunk list; XFER_PROBE: the blocks
 * [@probe->off, +@probe->len)) of @ff from @host. Lock held; curl_multi_add_handle does no I/O.
 * Returns 0 or -errno (nothing started).
 */
int fetch_xfer_start(struct fetch *f, struct fetch_file *ff, int host, size_t chunk,
		      const struct probe_range *probe, bool background, bool limited)
{
	char base[300], header[300], hash[HASH_STR_LEN], *rel = NULL, *url = NULL;
	struct xfer *x = calloc(1, sizeof(*x));
	int ret = -ENOMEM;

	if (!x)
		return -ENOMEM;
	x->ff = ff;
	x->host = host;
	x->chunk = chunk;
	x->background = background;
	x->limited = limited;
	x->easy = curl_easy_init();
	if (!x->easy)
		goto fail;
	if (chunk == XFER_LIST) {
		x->cap = 64 * 1024;
		x->buf = malloc(x->cap);
		if (!x->buf)
			goto fail;
	} else if (chunk == XFER_PROBE) {
		x->probe_off = probe->off;
		x->probe_len = probe->len;
		x->cap = (size_t)probe->len;
		x->buf = malloc(x->cap);
		if (!x->buf)
			goto fail;
	} else {
		x->cap = fetch_chunk_len(ff, chunk);
		x->fd = cache_file_fd(ff->cf);
		x->base = (uint64_t)chunk * HASH_CHUNK_SIZE;
		x->stage = malloc(FETCH_STAGE);
		if (!x->stage || hash_stream_new(&x->hs) < 0)
			goto fail;
	}
	ret = peers_base_url(f->cfg, (size_t)host, base, sizeof(base));
	if (ret < 0)
		goto fail;
	rel = url_path(x->easy, ff->category, ff->path);
	if (!rel) {
		ret = -ENOMEM;
		goto fail;
	}
	if (asprintf(&url, "%s/v1/%s/%s", base, chunk == XFER_LIST ? "chunks" : "files", rel) < 0) {
		url = NULL;
		ret = -ENOMEM;
		goto fail;
	}
	hash_format(&ff->hash, hash);
	snprintf(header, sizeof(header), "If-Match: \"%s\"", hash);
	x->headers = curl_slist_append(x->headers, header);
	if (chunk == XFER_PROBE)
		x->headers = curl_slist_append(x->headers, "X-Meshfs-Want-Blocks: 1");
	if (f->cfg->token) {
		char auth[600];

		snprintf(auth, sizeof(auth), "Authorization: Bearer %s", f->cfg->token);
		x->headers = curl_slist_append(x->headers, auth);
	}
	if (!x->headers) {
		ret = -ENOMEM;
		goto fail;
	}
	curl_easy_setopt(x->easy, CURLOPT_URL, url);
	curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, x->headers);
	curl_easy_setopt(x->easy, CURLOPT_WRITEFUNCTION, xfer_write);
	curl_easy_setopt(x->easy, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(x->easy, CURLOPT_PRIVATE, x);
	curl_easy_setopt(x->easy, CURLOPT_ERRORBUFFER, x->error);
	curl_easy_setopt(x->easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(x->easy, CURLOPT_CONNECTTIMEOUT_MS, (long)FETCH_CONNECT_TIMEOUT_MS);
	/* A source that sends nothing for a few seconds is stalled: cut it off. */
	curl_easy_setopt(x->easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(x->easy, CURLOPT_LOW_SPEED_TIME, (long)FETCH_STALL_SECONDS);
	curl_easy_setopt(x->easy, CURLOPT_PROTOCOLS_STR, "http");
	/* Large receive buffers: fewer callbacks and poll rounds per 4 MiB chunk. A probe's or
	 * a list's would cost more than it saves (curl allocates it for every transfer, and one
	 * this large is a fresh mmap whose pages fault in as they are written). */
	curl_easy_setopt(x->easy, CURLOPT_BUFFERSIZE,
			 (long)(chunk < XFER_PROBE ? FETCH_RECV_BUFFER : FETCH_SMALL_RECV_BUFFER));
	if (chunk == XFER_PROBE) {
		char range[64];

		snprintf(range, sizeof(range), "%" PRIu64 "-%" PRIu64, probe->off,
			 probe->off + probe->len - 1);
		curl_easy_setopt(x->easy, CURLOPT_RANGE, range);
		curl_easy_setopt(x->easy, CURLOPT_HEADERFUNCTION, fetch_probe_header);
		curl_easy_setopt(x->easy, CURLOPT_HEADERDATA, x);
	} else if (chunk != XFER_LIST) {
		uint64_t start = (uint64_t)chunk * HASH_CHUNK_SIZE;
		char range[64];

		snprintf(range, sizeof(range), "%" PRIu64 "-%" PRIu64, start,
			 start + fetch_chunk_len(ff, chunk) - 1);
		curl_easy_setopt(x->easy, CURLOPT_RANGE, range);
		ret = cache_reserve(f->cache, fetch_chunk_len(ff, chunk));
		if (ret < 0) {
			fetch_file_error(ff, "no cache space for chunk %zu: %s", chunk,
					 strerror(-ret));
			goto fail;
		}
		x->reserved = fetch_chunk_len(ff, chunk);
	}
	if (curl_multi_add_handle(f->multi, x->easy) != CURLM_OK) {
		ret = -EIO;
		goto fail;
	}
	x->started_ns = mono_ns();
	x->next = f->xfers;
	if (f->xfers)
		f->xfers->prev = x;
	f->xfers = x;
	ff->inflight++;
	if (chunk == XFER_LIST) {
		ff->list_inflight = true;
	} else if (chunk == XFER_PROBE) {
		if (!ff->cf && !ff->first_probe_ns)
			ff->first_probe_ns = x->started_ns;
		ff->probes[ff->n_probes++] = *probe;
	} else {
		ff->state[chunk] = CH_INFLIGHT;
		f->host_inflight[host] += fetch_chunk_len(ff, chunk);
		f->host_chunks[host]++;
	}
	f->active++;
	if (background)
		f->active_background++;
	free(rel);
	free(url);
	return 0;
fail:
	if (x->reserved)
		cache_release(f->cache, x->reserved);
	free(rel);
	free(url);
	xfer_free(x);
	return ret;
}

/* Whether some reader is parked, waiting. Lock held. */
static bool readers_waiting(const struct fetch *f)
{
	for (const struct fetch_file *ff = f->files; ff; ff = ff->next)
		if (ff->waiters)
			return true;
	return false;
}

/*
 * Ends the background completion of versions given up on (a chunk that is not here is no
 * longer wanted: no cache space, no source), once nothing of theirs is in flight. Their last
 * reference may go with it, and with it the cache file's: a partial copy nobody uses can then
 * be evicted. Lock held.
 */
static void drop_abandoned_locked(struct fetch *f)
{
	struct fetch_file *ff = f->files, *next;

	for (; ff; ff = next) {
		bool abandoned = false;

		next = ff->next;
		if (!ff->background || ff->complete || ff->finishing || ff->inflight ||
		    ff->list_inflight || ff->n_probes)
			continue;
		for (size_t i = 0; i < ff->nchunks && !abandoned; i++)
			abandoned = ff->state[i] != CH_PRESENT && !ff->want[i];
		if (!abandoned)
			continue;
		ff->background = false;
		file_unref_locked(f, ff); /* may free @ff */
	}
}

/* A background transfer whose chunk a reader now waits for (or will soon) is no longer held
 * to the bandwidth limits: reads pre-empt background work. Lock held; fetch thread. */
static void promote_read_chunks_locked(struct fetch *f)
{
	for (struct xfer *x = f->xfers; x; x = x->next)
		if (x->limited && x->chunk < XFER_PROBE &&
		    x->ff->want[x->chunk] >= FETCH_PRIO_AHEAD)
			x->limited = false;
}

/*
 * Whether background work waits: for FETCH_QUIET_NS after a probe answered a read, unless a
 * reader is waiting. Making a cache file, asking for a chunk list, starting a chunk and
 * checking a whole file all take CPU and the source's attention; right after a probe they
 * would compete with the reader it just answered (and with its next request) for both. Lock
 * held; fetch thread.
 */
static bool fetch_quiet(struct fetch *f)
{
	return f->quiet_until && mono_ns() < f->quiet_until && !readers_waiting(f);
}

/*
 * Starts what is most wanted, within the limits; while @quiet, only probes. Returns whether it
 * started a probe. Lock held.
 */
static bool schedule_locked(struct fetch *f, bool quiet, struct completion **done)
{
	bool probed;

	drop_abandoned_locked(f);
	promote_read_chunks_locked(f);
	probed = fetch_start_probes_locked(f);
	for (; !quiet;) {
		struct fetch_file *best_ff = NULL;
		size_t best_chunk = 0;
		int best_prio = 0;

		if (f->active >= FETCH_MAX_XFERS + 2)
			return probed;
		for (struct fetch_file *ff = f->files; ff; ff = ff->next) {
			/* No cache file yet: nothing but a probe starts (make_cache_file first). */
			if (ff->finishing || !ff->cf)
				continue;
			if (!ff->have_list) {
				int prio = 0;

				if (ff->list_inflight)
					continue;
				for (size_t i = 0; i < ff->nchunks; i++)
					if (ff->state[i] == CH_ABSENT && ff->want[i] > prio)
						prio = ff->want[i];
				if (prio > best_prio) {
					best_prio = prio;
					best_ff = ff;
					best_chunk = XFER_LIST;
				}
				continue;
			}
			for (size_t i = 0; i < ff->nchunks; i++) {
				if (ff->state[i] == CH_ABSENT && ff->want[i] > best_prio) {
					best_prio = ff->want[i];
					best_ff = ff;
					best_chunk = i;
				}
			}
		}
		if (!best_ff)
			return probed;
		/* Readers may go past the limit a little; background work never does. */
		if (best_prio < FETCH_PRIO_AHEAD && f->active >= FETCH_MAX_XFERS)
			return probed;
		if (best_prio <= FETCH_PRIO_BACKGROUND &&
		    f->active_background >= FETCH_MAX_BACKGROUND)
			return probed;
		/* Background completion waits while a reader does: its chunk gets the link. */
		if (best_prio <= FETCH_PRIO_BACKGROUND && readers_waiting(f))
			return probed;

		uint64_t bytes =
		    best_chunk == XFER_LIST ? 4096 : fetch_chunk_len(best_ff, best_chunk);
		bool busy = false;
		int host =
		    fetch_pick_source(f, best_ff, 0, bytes, best_chunk == XFER_LIST ? NULL : &busy);

		if (host < 0 && busy)
			return probed; /* its sources are at their limit: when a transfer ends */
		if (host < 0) {
			/* Nobody left who holds these bytes: every reader of them fails. */
			char last[sizeof(best_ff->last_error)];

			snprintf(last, sizeof(last), "%s", best_ff->last_error);
			if (strncmp(last, "no source left", 14) != 0)
				fetch_file_error(best_ff, "no source left for this version%s%s",
					   last[0] ? "; last error: "
						   : " (no reachable host holds it)",
					   last);
			cache_set_error(f->cache, best_ff->category, best_ff->path,
					best_ff->last_error);
			clear_want(best_ff);
			collect_waiters(best_ff, -EIO, done);
			if (best_ff->background) {
				best_ff->background = false;
				file_unref_locked(f, best_ff);
			}
			continue;
		}
		bool background = best_prio <= FETCH_PRIO_BACKGROUND;

		if (fetch_xfer_start(f, best_ff, host, best_chunk, NULL, background,
			       best_chunk != XFER_LIST && best_prio < FETCH_PRIO_AHEAD) < 0) {
			/* No memory or no cache space: fail what waits on it rather than spin. */
			if (best_chunk != XFER_LIST) {
				/* The version cannot complete here: stop wanting it (its
				 * background reference goes, see drop_abandoned_locked). */
				clear_want(best_ff);
				cache_set_error(f->cache, best_ff->category, best_ff->path,
						best_ff->last_error);
				collect_waiters(best_ff, -ENOSPC, done);
			} else {
				clear_want(best_ff);
				collect_waiters(best_ff, -EIO, done);
			}
		}
	}
	return probed;
}

/* Parses the chunk list answer of @x into the cache file. Returns 0 or -errno. */
static int parse_chunk_list(struct fetch_file *ff, struct xfer *x)
{
	struct hash128 whole, *chunks = NULL;
	json_error_t jerr;
	json_t *doc = json_loadb(x->buf, x->len, 0, &jerr), *list;
	int ret = -EPROTO;

	if (!doc)
		goto out;
	if (hash_parse(json_string_value(json_object_get(doc, "hash")), &whole) < 0 ||
	    !hash_equal(&whole, &ff->hash) ||
	    json_integer_value(json_object_get(doc, "size")) != (json_int_t)ff->size ||
	    json_integer_value(json_object_get(doc, "chunk_size")) != (json_int_t)HASH_CHUNK_SIZE)
		goto out;
	list = json_object_get(doc, "chunks");
	if (!json_is_array(list) || json_array_size(list) != ff->nchunks)
		goto out;
	chunks = calloc(ff->nchunks ? ff->nchunks : 1, sizeof(*chunks));
	if (!chunks) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < ff->nchunks; i++)
		if (hash_parse(json_string_value(json_array_get(list, i)), &chunks[i]) < 0)
			goto out;
	ret = cache_file_set_chunks(ff->cf, chunks, ff->nchunks);
out:
	free(chunks);
	json_decref(doc);
	return ret;
}

/*
 * Handles one finished transfer: verifies and stores what came, or drops the source. Called
 * without the lock (the chunk is ours while in flight); takes it to update the state.
 */
static void xfer_done(struct fetch *f, struct xfer *x, CURLcode rc, struct completion **done)
{
	struct fetch_file *ff = x->ff;
	const char *host = f->cfg->hosts[x->host].name;
	char why[300] = "";
	long status = 0;
	int64_t took = mono_ns() - x->started_ns;
	int ret = 0;

	if (x->chunk == XFER_PROBE) {
		fetch_probe_done(f, x, rc, done);
		return;
	}
	curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
	if (x->chunk != XFER_LIST && rc == CURLE_OK && x->write_err == 0 && x->staged)
		stage_flush(x);
	if (x->write_err < 0) {
		snprintf(why, sizeof(why), "cache write of chunk %zu: %s", x->chunk,
			 strerror(-x->write_err));
		ret = x->write_err;
	} else if (rc != CURLE_OK) {
		snprintf(why, sizeof(why), "%s: %s", host, x->error[0] ? x->error :
			 curl_easy_strerror(rc));
		ret = rc == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT : -ECONNREFUSED;
	} else if (x->chunk == XFER_LIST) {
		if (status != 200) {
			snprintf(why, sizeof(why), "%s: chunk list: HTTP %ld", host, status);
			ret = -EIO;
		} else if (parse_chunk_list(ff, x) < 0) {
			snprintf(why, sizeof(why), "%s: chunk list does not match version", host);
			ret = -EPROTO;
		}
	} else {
		struct hash128 expect, got;

		if ((status != 206 && !(status == 200 && ff->nchunks == 1)) ||
		    x->len != fetch_chunk_len(ff, x->chunk)) {
			snprintf(why, sizeof(why), "%s: chunk %zu: HTTP %ld, %zu bytes", host,
				 x->chunk, status, x->len);
			ret = -EIO;
		} else if (cache_file_chunk_hash(ff->cf, x->chunk, &expect) < 0 ||
			   (got = hash_stream_digest(x->hs), !hash_equal(&got, &expect))) {
			/* Its bytes are in the cache file but the chunk stays absent, so no
			 * reader ever sees one of them; the source is dropped. */
			snprintf(why, sizeof(why), "%s served a corrupt chunk %zu", host, x->chunk);
			ret = -EBADMSG;
		} else {
			ret = cache_file_commit_chunk(ff->cf, x->chunk, x->len);
			if (ret < 0)
				snprintf(why, sizeof(why), "cache write of chunk %zu: %s", x->chunk,
					 strerror(-ret));
			else
				x->reserved = 0; /* consumed by the commit */
		}
	}
	/* The host's record (and circuit): a write into our cache failing is not its doing; a
	 * 404 or 412 is an answer (the version went), not a failure of the host. */
	if (f->peers && strncmp(why, "cache", 5) != 0)
		peers_record_transfer(f->peers, (size_t)x->host, ret == 0 ? x->len : 0, took,
				      ret == -EBADMSG ? -EIO
				      : ret < 0 && status == 404 ? -ENOENT
				      : ret < 0 && status == 412 ? -ESTALE : ret);
	if (ret < 0)
		log_msg(ret == -EBADMSG ? LOG_WARNING : LOG_INFO, "fetch %s/%s: %s", ff->category,
			ff->path, why);
	if (x->reserved)
		cache_release(f->cache, x->reserved);

	pthread_mutex_lock(&f->lock);
	ff->inflight--;
	f->active--;
	if (x->background)
		f->active_background--;
	if (x->chunk == XFER_LIST) {
		ff->list_inflight = false;
		if (ret == 0)
			ff->have_list = true;
	} else {
		f->host_inflight[x->host] -= fetch_chunk_len(ff, x->chunk);
		f->host_chunks[x->host]--;
		ff->state[x->chunk] = ret == 0 ? CH_PRESENT : CH_ABSENT;
	}
	if (ret < 0) {
		/* A cache write failing is ours, not the source's. */
		if (!(x->chunk != XFER_LIST && ret != -EBADMSG && strncmp(why, "cache", 5) == 0))
			ff->dropped |= (uint64_t)1 << x->host;
		fetch_file_error(ff, "%s", why);
		if (strncmp(why, "cache", 5) == 0) {
			clear_want(ff);
			collect_waiters(ff, ret, done);
		}
	}
	collect_waiters(ff, 0, done);
	pthread_mutex_unlock(&f->lock);
}

/* Verifies a version whose chunks are all here; runs on the fetch thread without the lock. */
static void finish_file(struct fetch *f, struct fetch_file *ff, struct completion **done)
{
	int ret = cache_file_finish(ff->cf);
	fetch_complete_fn complete = NULL;
	void *complete_arg = NULL;

	pthread_mutex_lock(&f->lock);
	ff->finishing = false;
	if (ret == 0) {
		ff->complete = true;
		ff->last_error[0] = '\0';
		cache_set_error(f->cache, ff->category, ff->path, "");
		log_msg(LOG_INFO, "fetch %s/%s: complete and verified (%" PRIu64 " bytes)",
			ff->category, ff->path, ff->size);
		complete = f->complete;
		complete_arg = f->complete_arg;
	} else {
		/* Chunks matched their hashes but the whole does not: the chunk list was wrong.
		 * Start again from nothing. */
		fetch_file_error(ff, "whole-file hash mismatch after fetching: %s", strerror(-ret));
		log_msg(LOG_WARNING, "fetch %s/%s: %s", ff->category, ff->path, ff->last_error);
		for (size_t i = 0; i < ff->nchunks; i++)
			ff->state[i] = cache_file_chunk_present(ff->cf, i) ? CH_PRESENT : CH_ABSENT;
		ff->have_list = false;
	}
	if (ff->background && (ff->complete || !file_wanted(ff))) {
		ff->background = false;
		file_unref_locked(f, ff);
	}
	pthread_mutex_unlock(&f->lock);
	/* @ff lives on: the caller holds a reference. */
	if (complete)
		complete(complete_arg, ff->category, ff->path, &ff->hash);
	(void)done;
}

/* ------------------------------------------------------------------ the thread */

static void expire_locked(struct fetch *f, struct completion **done)
{
	int64_t now = mono_ns();

	for (struct fetch_file *ff = f->files; ff; ff = ff->next) {
		struct waiter **pp = &ff->waiters;

		while (*pp) {
			struct waiter *w = *pp;

			if (w->deadline_ns > now) {
				pp = &w->next;
				continue;
			}
			*pp = w->next;
			char last[sizeof(ff->last_error)];

			snprintf(last, sizeof(last), "%s", ff->last_error);
			fetch_file_error(ff, "no data within the read deadline of %d s%s%s",
				   f->cfg->auto_sync.read_deadline_seconds,
				   last[0] ? "; last error: " : "", last);
			cache_set_error(f->cache, ff->category, ff->path, ff->last_error);
			if (!fetch_answer_waiter(done, w, -ETIMEDOUT, -1, NULL)) {
				w->done(w->cookie, -ETIMEDOUT, -1, NULL, w->off, 0);
				free(w);
			}
		}
	}
}

/* The first version whose chunks are all present and not yet verified, with a reference. */
static struct fetch_file *next_to_finish_locked(struct fetch *f)
{
	for (struct fetch_file *ff = f->files; ff; ff = ff->next) {
		bool all = ff->cf && !ff->complete && !ff->finishing && ff->have_list;

		for (size_t i = 0; all && i < ff->nchunks; i++)
			all = ff->state[i] == CH_PRESENT;
		if (all) {
			ff->finishing = true;
			ff->refs++;
			return ff;
		}
	}
	return NULL;
}

/* Milliseconds until a paused transfer may go on (1 .. FETCH_POLL_MS). */
static int resume_in_ms(struct fetch *f)
{
	int64_t wait = bucket_wait_ns(&f->all_bw);

	for (struct xfer *x = f->xfers; x; x = x->next) {
		int64_t w = bucket_wait_ns(&f->host_bw[x->host]);

		if (x->paused && w > wait)
			wait = w;
	}
	wait = wait / 1000000 + 1;
	return wait > FETCH_POLL_MS ? FETCH_POLL_MS : (int)wait;
}

/* How long the fetch thread may wait for sockets: until the quiet time is over, a paused
 * transfer may go on or a cache file is due, at most FETCH_POLL_MS. Lock held. */
static int poll_ms_locked(struct fetch *f, bool quiet)
{
	int ms = f->n_paused ? resume_in_ms(f) : FETCH_POLL_MS;

	/* A version whose cache file waits behind its probes: look again when that ends. */
	for (struct fetch_file *ff = f->files; ff && ms > 1; ff = ff->next) {
		int64_t due = cache_file_due(ff), left;

		if (due == 0 || due == INT64_MAX)
			continue;
		left = (due - mono_ns()) / 1000000;
		if (left + 1 < ms)
			ms = left < 0 ? 1 : (int)left + 1;
	}

	if (quiet) {
		int64_t left = (f->quiet_until - mono_ns()) / 1000000 + 1;

		if (left < ms)
			ms = (int)left;
	}
	return ms;
}

/* Resumes the paused transfers whose buckets have refilled. Fetch thread only. */
static void resume_paused(struct fetch *f)
{
	int64_t now = mono_ns();

	if (!f->n_paused)
		return;
	bucket_refill(&f->all_bw, now);
	for (struct xfer *x = f->xfers; x; x = x->next) {
		if (!x->paused)
			continue;
		bucket_refill(&f->host_bw[x->host], now);
		if (x->limited &&
		    (!bucket_allows(&f->all_bw) || !bucket_allows(&f->host_bw[x->host])))
			continue;
		/* Resuming may hand the data over at once, and pause again. */
		x->paused = false;
		f->n_paused--;
		curl_easy_pause(x->easy, CURLPAUSE_CONT);
	}
}

/*
 * A version that is wanted but has no cache file yet, with a reference; or NULL. Versions a
 * reader wants come first. One with a probe in flight waits for it: the probe's answer is what
 * a reader waits for, and making the file (a file, a catalog row) would hold the thread that
 * answers it. Not for longer than FETCH_PROBE_HEAD_NS after its first probe, though: readers at
 * random places may keep probes out all the time, and the version must still get its chunks
 * and complete. Lock held.
 */
static struct fetch_file *next_to_create_locked(struct fetch *f)
{
	struct fetch_file *pick = NULL;
	int64_t now = mono_ns();

	for (struct fetch_file *ff = f->files; ff; ff = ff->next) {
		if (cache_file_due(ff) > now)
			continue;
		if (!pick || ff->waiters) {
			pick = ff;
			if (ff->waiters)
				break;
		}
	}
	if (pick)
		pick->refs++;
	return pick;
}

/*
 * Makes the cache file of @ff, which next_to_create_locked() gave with a reference (dropped
 * here). When that fails, @ff's readers get EIO and nothing of it is wanted any more (a new
 * read tries again). Fetch thread, no lock held.
 */
static void make_cache_file(struct fetch *f, struct fetch_file *ff, struct completion **done)
{
	struct cache_file *cf = NULL;
	int ret = cache_file_get(f->cache, ff->category, ff->path, &ff->hash, ff->size, &cf);

	pthread_mutex_lock(&f->lock);
	if (ret == 0) {
		file_set_cf_locked(ff, cf);
		/* The cache may hold some of it, or all (a copy under another name). */
		collect_waiters(ff, 0, done);
		if (ff->complete && ff->background) {
			ff->background = false;
			file_unref_locked(f, ff); /* not the last: ours is still held */
		}
	} else {
		fetch_file_error(ff, "cannot make its cache file: %s", strerror(-ret));
		log_msg(LOG_WARNING, "fetch %s/%s: %s", ff->category, ff->path, ff->last_error);
		cache_set_error(f->cache, ff->category, ff->path, ff->last_error);
		clear_want(ff);
		collect_waiters(ff, ret, done);
		if (ff->background) {
			ff->background = false;
			file_unref_locked(f, ff); /* not the last: ours is still held */
		}
	}
	file_unref_locked(f, ff);
	pthread_mutex_unlock(&f->lock);
}

static void *fetch_main(void *arg)
{
	struct fetch *f = arg;

	pthread_setname_np(pthread_self(), "meshfs-fetch");
	for (;;) {
		struct completion *done = NULL;
		struct fetch_file *fin, *make;
		bool quiet, probed;
		CURLMsg *msg;
		int running, left, wait_ms;

		pthread_mutex_lock(&f->lock);
		if (f->stop) {
			pthread_mutex_unlock(&f->lock);
			break;
		}
		expire_locked(f, &done);
		quiet = fetch_quiet(f);
		probed = schedule_locked(f, quiet, &done);
		/* A probe just started goes out first; the rest waits for the next round. */
		fin = quiet || probed ? NULL : next_to_finish_locked(f);
		make = fin || quiet || probed ? NULL : next_to_create_locked(f);
		wait_ms = poll_ms_locked(f, quiet);
		pthread_mutex_unlock(&f->lock);
		run_completions(done);
		done = NULL;
		if (fin) {
			finish_file(f, fin, &done);
			pthread_mutex_lock(&f->lock);
			file_unref_locked(f, fin);
			pthread_mutex_unlock(&f->lock);
			continue;
		}
		if (make) {
			/* One per round: the transfers under way are serviced in between. */
			make_cache_file(f, make, &done);
			run_completions(done);
			done = NULL;
		}
		/* A probe just started goes out now: a reader waits for it. */
		if (!probed && !make)
			curl_multi_poll(f->multi, NULL, 0, wait_ms, NULL);
		resume_paused(f);
		curl_multi_perform(f->multi, &running);
		while ((msg = curl_multi_info_read(f->multi, &left))) {
			struct xfer *x = NULL;
			struct fetch_file *ff;

			if (msg->msg != CURLMSG_DONE)
				continue;
			curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
			curl_multi_remove_handle(f->multi, x->easy);
			if (x->paused)
				f->n_paused--;
			if (x->prev)
				x->prev->next = x->next;
			else
				f->xfers = x->next;
			if (x->next)
				x->next->prev = x->prev;
			ff = x->ff;
			xfer_done(f, x, msg->data.result, &done);
			xfer_free(x);
			pthread_mutex_lock(&f->lock);
			/* Its last transfer may have been what kept a closed version alive. */
			ff->refs++;
			file_unref_locked(f, ff);
			pthread_mutex_unlock(&f->lock);
		}
		run_completions(done);
	}
	return NULL;
}

/* The background limit of host @h in megabits/s: the first host_bandwidth_overrides pattern
 * that matches its name, else its bandwidth_mbps; 0 = none. */
static double host_mbps(const struct mfs_config *cfg, const struct cfg_host *h)
{
	for (size_t i = 0; i < cfg->auto_sync.n_host_bandwidth_overrides; i++)
		if (fnmatch(cfg->auto_sync.host_bandwidth_overrides[i].pattern, h->name, 0) == 0)
			return cfg->auto_sync.host_bandwidth_overrides[i].mbps;
	return h->bandwidth_mbps;
}

/* Buckets hold a tenth of a second's worth: a limit holds over short spans too. */
static void init_buckets(struct fetch *f)
{
	int64_t now = mono_ns();

	bucket_init(&f->all_bw, bucket_mbps_to_bytes(f->cfg->auto_sync.bandwidth_limit_mbps), 0.1,
		    now);
	for (size_t h = 0; h < 64; h++)
		bucket_init(&f->host_bw[h],
			    h < f->cfg->n_hosts ? bucket_mbps_to_bytes(host_mbps(f->cfg,
									  &f->cfg->hosts[h]))
						: 0,
			    0.1, now);
}

int fetch_start(const struct mfs_config *cfg, struct cache *cache, struct peers *peers,
		struct fetch **out)
{
	struct fetch *f = calloc(1, sizeof(*f));
	int ret = -ENOMEM;

	if (!f)
		return -ENOMEM;
	f->cfg = cfg;
	f->cache = cache;
	f->peers = peers;
	init_buckets(f);
	pthread_mutex_init(&f->lock, NULL);
	f->multi = curl_multi_init();
	if (!f->multi)
		goto fail;
	if (pthread_create(&f->thread, NULL, fetch_main, f) != 0) {
		ret = -EAGAIN;
		goto fail;
	}
	f->thread_started = true;
	*out = f;
	return 0;
fail:
	fetch_stop(f);
	return ret;
}

void fetch_set_complete_hook(struct fetch *f, fetch_complete_fn fn, void *arg)
{
	pthread_mutex_lock(&f->lock);
	f->complete = fn;
	f->complete_arg = arg;
	pthread_mutex_unlock(&f->lock);
}

void fetch_stop(struct fetch *f)
{
	struct completion *done = NULL;

	if (!f)
		return;
	pthread_mutex_lock(&f->lock);
	f->stop = true;
	pthread_mutex_unlock(&f->lock);
	if (f->thread_started) {
		curl_multi_wakeup(f->multi);
		pthread_join(f->thread, NULL);
	}
	/* Transfers still under way: abandon them. */
	while (f->xfers) {
		struct xfer *x = f->xfers;

		f->xfers = x->next;
		curl_multi_remove_handle(f->multi, x->easy);
		x->ff->inflight--;
		if (x->reserved)
			cache_release(f->cache, x->reserved);
		xfer_free(x);
	}
	pthread_mutex_lock(&f->lock);
	for (struct fetch_file *ff = f->files; ff; ff = ff->next)
		collect_waiters(ff, -ESHUTDOWN, &done);
	pthread_mutex_unlock(&f->lock);
	run_completions(done);
	while (f->files) {
		struct fetch_file *next = f->files->next;

		file_free(f->files);
		f->files = next;
	}
	if (f->multi)
		curl_multi_cleanup(f->multi);
	pthread_mutex_destroy(&f->lock);
	free(f);
}
