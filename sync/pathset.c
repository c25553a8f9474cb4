/*
 * pathset — the indexer's hash sets of paths (see pathset.h for what they hold).
 *
 * Chained hashing: FNV-1a over the category index and the path (a multiplicative hash for a
 * wd), in a power-of-two bucket array that doubles once the members reach the number of
 * buckets (a failed growth only makes the chains longer). Members are allocated one by one and
 * never move, so a pointer from pset_find() stays good until that member is deleted or
 * extracted. pset_extract() hands the members a predicate accepts over as a list, so the
 * caller can act on them, and put some back, without walking a set that changes under it.
 */
#include "sync/pathset.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static uint64_t key_hash(const struct pset *s, int wd, size_t ci, const char *path)
{
	uint64_t h = 1469598103934665603ULL;

	if (s->by_wd)
		return (uint64_t)(unsigned)wd * 0x9e3779b97f4a7c15ULL;
	h = (h ^ ci) * 1099511628211ULL;
	for (const unsigned char *p = (const unsigned char *)path; *p; p++)
		h = (h ^ *p) * 1099511628211ULL;
	return h;
}

static bool key_equal(const struct pset *s, const struct pent *e, int wd, size_t ci,
		      const char *path)
{
	if (s->by_wd)
		return e->wd == wd;
	return e->cat == ci && strcmp(e->path, path) == 0;
}

struct pent *pset_find(struct pset *s, int wd, size_t ci, const char *path)
{
	uint64_t h;

	if (!s->n_buckets)
		return NULL;
	h = key_hash(s, wd, ci, path);
	for (struct pent *e = s->buckets[h & (s->n_buckets - 1)]; e; e = e->next)
		if (e->hash == h && key_equal(s, e, wd, ci, path))
			return e;
	return NULL;
}

static void pset_link(struct pset *s, struct pent *e)
{
	size_t b = e->hash & (s->n_buckets - 1);

	e->next = s->buckets[b];
	s->buckets[b] = e;
	s->count++;
}

static int pset_grow(struct pset *s)
{
	size_t n = s->n_buckets ? s->n_buckets * 2 : 64;
	struct pent **nb = calloc(n, sizeof(*nb));
	size_t old_n = s->n_buckets;
	struct pent **old = s->buckets;

	if (!nb)
		return -ENOMEM;
	s->buckets = nb;
	s->n_buckets = n;
	s->count = 0;
	for (size_t i = 0; i < old_n; i++) {
		while (old[i]) {
			struct pent *e = old[i];

			old[i] = e->next;
			pset_link(s, e);
		}
	}
	free(old);
	return 0;
}

/* Puts an entry taken out by pset_extract() back. */
int pset_relink(struct pset *s, struct pent *e)
{
	if (s->count >= s->n_buckets && pset_grow(s) < 0 && !s->n_buckets)
		return -ENOMEM;
	pset_link(s, e);
	return 0;
}

void pset_entry_free(struct pent *e)
{
	if (e)
		free(e->path);
	free(e);
}

/* Adds a new member (the caller has checked it is absent). NULL on ENOMEM. */
struct pent *pset_add(struct pset *s, int wd, size_t ci, const char *path)
{
	struct pent *e = calloc(1, sizeof(*e));

	if (!e)
		goto out;
	e->path = strdup(path);
	e->wd = wd;
	e->cat = ci;
	e->hash = key_hash(s, wd, ci, path);
	if (!e->path || pset_relink(s, e) < 0) {
		pset_entry_free(e);
		e = NULL;
	}
out:
	return e;
}

void pset_del(struct pset *s, struct pent *victim)
{
	struct pent **pp = &s->buckets[victim->hash & (s->n_buckets - 1)];

	for (; *pp; pp = &(*pp)->next) {
		if (*pp == victim) {
			*pp = victim->next;
			s->count--;
			pset_entry_free(victim);
			break;
		}
	}
}

void pset_del_key(struct pset *s, size_t ci, const char *path)
{
	struct pent *e = pset_find(s, -1, ci, path);

	if (e)
		pset_del(s, e);
}

/* Unlinks every member @pred accepts and returns them as a list chained through ->next. */
struct pent *pset_extract(struct pset *s, bool (*pred)(struct pent *e, void *arg),
			  void *arg)
{
	struct pent *taken = NULL;

	for (size_t b = 0; b < s->n_buckets; b++) {
		struct pent **pp = &s->buckets[b];

		while (*pp) {
			struct pent *e = *pp;

			if (pred(e, arg)) {
				*pp = e->next;
				s->count--;
				e->next = taken;
				taken = e;
			} else {
				pp = &e->next;
			}
		}
	}
	return taken;
}

static bool pred_all(struct pent *e, void *arg)
{
	return true;
}

void pset_clear(struct pset *s)
{
	struct pent *list = pset_extract(s, pred_all, NULL);

	while (list) {
		struct pent *next = list->next;

		pset_entry_free(list);
		list = next;
	}
}

void pset_destroy(struct pset *s)
{
	pset_clear(s);
	free(s->buckets);
	s->buckets = NULL;
	s->n_buckets = 0;
}
