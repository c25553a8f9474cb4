/*
 * pathset — the indexer's hash sets of paths. A member is keyed by (category index, relative
 * path), or by inotify watch descriptor in a set whose by_wd is true; its other fields mean
 * what the set that holds it says (struct pent). A zeroed struct pset is an empty set (set
 * by_wd before the first add).
 *
 * No locking: a set belongs to one thread (the indexer's), which serialises every call.
 */
#ifndef MESHFS_PATHSET_H
#define MESHFS_PATHSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What a file looked like when it was last seen, to tell "quiet" without trusting clocks. */
struct fsig {
	uint64_t dev;
	uint64_t ino;
	uint64_t size;
	int64_t mtime_ns;
	int64_t ctime_ns;
};

/*
 * One member of a path set (keyed by category and relative path) or of the watch table
 * (keyed by wd). Which fields mean something depends on the set.
 */
struct pent {
	struct pent *next;
	uint64_t hash;
	size_t cat;
	char *path;
	int wd;			/* watches: the key; dirs: the dir's watch, -1 if none */
	int64_t due;		/* pending: mono ns when to look again */
	int64_t seen_at;	/* pending: mono ns when the file was first seen as @sig */
	struct fsig sig;	/* pending: valid when has_sig */
	bool has_sig;
	uint64_t gen;		/* dirs: the scan generation that last met it */
};

struct pset {
	struct pent **buckets;
	size_t n_buckets;	/* 0 or a power of two */
	size_t count;
	bool by_wd;
};

/* The member with key (@ci, @path), or @wd in a by_wd set; NULL when absent. The set keeps
 * owning it. */
struct pent *pset_find(struct pset *s, int wd, size_t ci, const char *path);
/* Adds a new member (the caller has checked it is absent) with a copy of @path, its other
 * fields zero. Returns it, owned by the set, or NULL on ENOMEM. */
struct pent *pset_add(struct pset *s, int wd, size_t ci, const char *path);
/* Unlinks and frees @victim, a member of @s. */
void pset_del(struct pset *s, struct pent *victim);
/* pset_del() of the member (@ci, @path), if there is one. Not for by_wd sets. */
void pset_del_key(struct pset *s, size_t ci, const char *path);
/* Unlinks every member @pred accepts and returns them as a list chained through ->next. The
 * caller owns them: each goes back with pset_relink() or is freed with pset_entry_free(). */
struct pent *pset_extract(struct pset *s, bool (*pred)(struct pent *e, void *arg), void *arg);
/* Puts @e, taken out by pset_extract(), back. 0, or -ENOMEM when the set has no buckets and
 * none could be allocated (@e is then still the caller's). */
int pset_relink(struct pset *s, struct pent *e);
/* Frees a member that no set holds; NULL is fine. */
void pset_entry_free(struct pent *e);
/* Frees every member; the set stays usable. */
void pset_clear(struct pset *s);
/* Frees every member and the buckets, leaving an empty set. */
void pset_destroy(struct pset *s);

#endif
