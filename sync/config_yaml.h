/*
 * config_yaml — the libyaml walking layer under config.c (private to sync/config*.c).
 *
 * cfgy_open() reads one file whole and loads its single YAML document; every node keeps its
 * line, so any later error can name the place. The document is then read back the way the
 * cluster's PyYAML tools read it: cfgy_map_pairs() flattens a map (merge keys applied, a key
 * given twice keeping its later value, a null value an empty map) and the cfgy_get_*()
 * helpers read scalars, taking an empty, "~" or "null" value as "not set" and then leaving
 * the destination alone. Every error is one line written into the caller's buffer by
 * cfgy_fail() ("FILE:LINE: key 'a.b': expected ..., got '...'") and returned as -EINVAL;
 * warnings (an unknown key, a key given twice) are logged once per key path.
 *
 * Nothing here knows the meshfs schema (that is config.c). A struct cfgy belongs to one load
 * on one thread; no locks.
 */
#ifndef MESHFS_CONFIG_YAML_H
#define MESHFS_CONFIG_YAML_H

#include <stdbool.h>
#include <stddef.h>
#include <yaml.h>

/* Room for a key path ("hosts.NAME.storage_paths.KEY") in messages. */
#define CFGY_KEY_MAX 320

/* One load: the document and where errors and warnings go. Zero it before cfgy_open(). */
struct cfgy {
	const char *file;	/* as the caller named it, for messages */
	char *base_dir;		/* absolute dir of the file: relative paths start here */
	yaml_document_t doc;
	bool have_doc;
	char *err;		/* the caller's error buffer (may be NULL) */
	size_t errlen;
	char **warned;		/* "kind:key path" of each warning given, to give it once */
	size_t n_warned;
};

/* Where a map sits: its key path for errors, and for warnings with host names folded to '*'. */
struct cfgy_sect {
	const char *err;
	const char *warn;
};

/* One pair of a flattened map; all three point into the document. */
struct cfgy_kv {
	const char *key;
	yaml_node_t *key_node;
	yaml_node_t *val;
};

struct cfgy_kvlist {
	struct cfgy_kv *v;
	size_t n, cap;
};

enum cfgy_ftype {
	CFGY_BOOL,
	CFGY_INT_POS,		/* integer >= 1 */
	CFGY_INT_NONNEG,	/* integer >= 0 */
	CFGY_PORT,
	CFGY_NUM,		/* number >= 0, may be fractional */
	CFGY_STR,
	CFGY_SPECIAL,		/* handled by the section's own code */
};

/* One known key of a map and where its value goes (offset into the section's struct). */
struct cfgy_field {
	const char *name;
	enum cfgy_ftype type;
	size_t off;
};

/*
 * Sets up *y (which must be zeroed) for @file, reads the file and loads its one document.
 * @err/@errlen (may be NULL/0) is the caller's buffer for the error line, kept in *y for every
 * later cfgy_fail(); @file and @err must outlive *y. Returns 0; -EINVAL on a YAML syntax error
 * or a second document; the read's -errno (with "cannot read the config file" in @err);
 * -ENOMEM. Release *y with cfgy_close() whatever this returns.
 */
int cfgy_open(struct cfgy *y, const char *file, char *err, size_t errlen);

/* Frees what *y holds (the document included); safe on a zeroed or failed *y. */
void cfgy_close(struct cfgy *y);

/* The document's root node, or NULL when the file holds no document. Owned by *y. */
yaml_node_t *cfgy_root(struct cfgy *y);

/* Node @index of the document (a sequence item or pair member), or NULL. Owned by *y. */
yaml_node_t *cfgy_node(struct cfgy *y, int index);

/* The 1-based line @node starts on, 0 for NULL. */
size_t cfgy_line(const yaml_node_t *node);

/* True for NULL and for an empty, "~" or "null" plain scalar: PyYAML's None, "not set". */
bool cfgy_is_null(const yaml_node_t *node);

/*
 * What @node holds, for "got ...": "nothing", "a list", "a map" or the quoted scalar,
 * shortened. Returns @buf or a static string; @len must be >= 72.
 */
const char *cfgy_describe(const yaml_node_t *node, char *buf, size_t len);

/*
 * Writes the one error line into y->err: "FILE:LINE: key 'KEY': MESSAGE", leaving out the
 * line or the key when @node or @key is NULL; control bytes become '?'. Returns -EINVAL so
 * callers can return it directly.
 */
int cfgy_fail(struct cfgy *y, const yaml_node_t *node, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/*
 * "prefix.key" (or "key" when @prefix is NULL or empty) in @buf, control bytes as '?'; a path
 * too long is cut, which only shortens a message. Returns @buf.
 */
const char *cfgy_keypath(char *buf, size_t len, const char *prefix, const char *key);

/*
 * Logs "ignoring unknown key" for @kv under @warn_prefix, once per key path per load.
 * Returns 0 or -ENOMEM.
 */
int cfgy_warn_unknown(struct cfgy *y, const struct cfgy_kv *kv, const char *warn_prefix);

/* The pair of @l whose key is @key, or NULL. Points into @l. */
const struct cfgy_kv *cfgy_kv_find(const struct cfgy_kvlist *l, const char *key);

/* Frees the array of @l (not the nodes, which the document owns) and zeroes @l. */
void cfgy_kvlist_free(struct cfgy_kvlist *l);

/*
 * The pairs of map @node, flattened as PyYAML sees it, in *out; free with cfgy_kvlist_free()
 * whatever this returns. A null value is an empty map; anything else that is not a map is an
 * error saying @what was expected. @s names the map in errors and warnings. Returns 0,
 * -EINVAL (message in y->err) or -ENOMEM.
 */
int cfgy_map_pairs(struct cfgy *y, yaml_node_t *node, const struct cfgy_sect *s,
		   const char *what, struct cfgy_kvlist *out);

/*
 * Points *out at the text of scalar @node (owned by the document), or at NULL when the value
 * is null (the key counts as not set). Anything but a scalar, or one with a NUL byte, is
 * -EINVAL with an error that says @what was expected under @key.
 */
int cfgy_get_scalar(struct cfgy *y, const yaml_node_t *node, const char *key, const char *what,
		    const char **out);

/*
 * Sets *n to the number of items of sequence @node, 0 when the value is null (the key counts
 * as not set); read item i with cfgy_node(y, node->data.sequence.items.start[i]). Anything
 * but a sequence is -EINVAL with an error that says @what was expected under @key.
 */
int cfgy_get_seq(struct cfgy *y, const yaml_node_t *node, const char *key, const char *what,
		 size_t *n);

/*
 * A plain decimal number >= 0 ("2", "0.5", "1e3"; no hex, inf or nan) from @s into *out.
 * Returns 0 or -EINVAL, writing no message.
 */
int cfgy_parse_number(const char *s, double *out);

/* A number >= 0 into *out; a null value leaves *out alone. Returns 0 or -EINVAL. */
int cfgy_get_number(struct cfgy *y, const yaml_node_t *node, const char *key, double *out);

/*
 * Replaces *out (freeing the old string) with a new copy of the value, which the caller
 * owns; a null or empty value leaves *out alone. Returns 0, -EINVAL or -ENOMEM.
 */
int cfgy_get_string(struct cfgy *y, const yaml_node_t *node, const char *key, char **out);

/*
 * Like cfgy_get_string(), for a path, made absolute: "~" and "~/..." under $HOME when
 * @expand_home (else kept as written, for a remote host), a relative path under the config
 * file's directory; the result is normalised lexically. Returns 0, -EINVAL or -ENOMEM.
 */
int cfgy_get_path(struct cfgy *y, const yaml_node_t *node, const char *key, bool expand_home,
		  char **out);

/*
 * Sets field @f of the struct at @base from @node, as @f->type says (a CFGY_STR field is a
 * char * replaced as by cfgy_get_string(); CFGY_SPECIAL does nothing); a null value leaves
 * the field alone. Returns 0, -EINVAL or -ENOMEM.
 */
int cfgy_set_field(struct cfgy *y, void *base, const struct cfgy_field *f,
		   const yaml_node_t *node, const char *key);

/* The entry of @fields[@n] called @name, or NULL. */
const struct cfgy_field *cfgy_find_field(const struct cfgy_field *fields, size_t n,
					 const char *name);

#endif
