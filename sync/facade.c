/*
 * facade — the daemon side of `meshfs sync` (see facade.h).
 *
 * The catalog is walked once (no lock of ours is held while it calls back), each live entry
 * is matched against the request's filters, and the answer lists totals and failures. The
 * walk is bounded by the catalog's size; failures are capped so the answer stays small.
 */
#include "sync/facade.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sync/catalog.h"
#include "sync/config.h"
#include "sync/daemon.h"
#include "sync/log.h"

#define FACADE_MAX_LISTED_FAILURES 100

static const char *const priorities[] = { "low", "normal", "high", "critical" };

bool facade_name_matches(const char *name, const char *board_type, int num_players)
{
	const char *base = strrchr(name, '/');
	char want[160];

	base = base ? base + 1 : name;
	if (board_type && *board_type && num_players > 0) {
		snprintf(want, sizeof(want), "_%s_%dp", board_type, num_players);
		return strstr(base, want) != NULL;
	}
	if (board_type && *board_type) {
		/* "_<board>_" followed by a player count: "_hex8_" must not match "_hex8x_". */
		snprintf(want, sizeof(want), "_%s_", board_type);
		for (const char *p = strstr(base, want); p; p = strstr(p + 1, want)) {
			const char *q = p + strlen(want);

			if (*q >= '0' && *q <= '9') {
				while (*q >= '0' && *q <= '9')
					q++;
				if (*q == 'p')
					return true;
			}
		}
		return false;
	}
	if (num_players > 0) {
		snprintf(want, sizeof(want), "_%dp", num_players);
		for (const char *p = strstr(base, want); p; p = strstr(p + 1, want)) {
			char after = p[strlen(want)];

			/* "_2p" must end the token: "_2p.db", "_2p_v3", not "_2px". */
			if (after == '\0' || after == '.' || after == '_' || after == '-')
				return true;
		}
		return false;
	}
	return true;
}

struct sync_walk {
	const struct mfs_config *cfg;
	int cat;			/* -1 = all */
	const char *board_type;
	int num_players;
	const char *host;		/* NULL = any */
	json_int_t files, bytes, verified_files, verified_bytes, failures;
	json_t *failed;
};

static int walk_one(void *arg, const struct cat_entry *e)
{
	struct sync_walk *w = arg;
	int cat = config_category_index(w->cfg, e->category);

	if (cat < 0 || (w->cat >= 0 && cat != w->cat))
		return 0;
	if (w->host && strcmp(e->host, w->host) != 0)
		return 0;
	if (!facade_name_matches(e->path, w->board_type, w->num_players))
		return 0;
	w->files++;
	w->bytes += (json_int_t)e->size;
	if (strcmp(e->origin, w->cfg->node) == 0 && strcmp(e->host, w->cfg->node) == 0) {
		w->verified_files++;
		w->verified_bytes += (json_int_t)e->size;
		return 0;
	}
	if (w->failures++ < FACADE_MAX_LISTED_FAILURES)
		json_array_append_new(w->failed,
				      json_pack("{s:s+++, s:s, s:s}", "path", e->category, "/",
						e->path, "", "host", e->host, "error",
						"not fetched by meshfs sync in this version (AutoSync "
						"issue): it is fetched when read, or queued with "
						"setfattr -n user.meshfs.prefetch"));
	return 0;
}

json_t *facade_sync(struct daemon *d, json_t *req)
{
	const struct mfs_config *cfg = d->cfg;
	struct sync_walk w = { .cfg = cfg, .cat = -1 };
	const char *what = json_string_value(json_object_get(req, "what"));
	const char *prio = json_string_value(json_object_get(req, "priority"));
	json_t *resp = NULL;
	size_t i;
	int ret;

	w.board_type = json_string_value(json_object_get(req, "board_type"));
	w.num_players = (int)json_integer_value(json_object_get(req, "num_players"));
	w.host = json_string_value(json_object_get(req, "host"));
	if (what && strcmp(what, "all") != 0) {
		w.cat = config_category_index(cfg, what);
		if (w.cat < 0)
			return json_pack("{s:s++}", "error", "unknown category '", what, "'");
	}
	for (i = 0; prio && i < sizeof(priorities) / sizeof(priorities[0]); i++)
		if (strcmp(prio, priorities[i]) == 0)
			break;
	if (prio && i == sizeof(priorities) / sizeof(priorities[0]))
		return json_pack("{s:s+++}", "error", "unknown priority '", prio,
				 "' (low, normal, high or critical)");
	if (w.host && !config_find_host(cfg, w.host))
		return json_pack("{s:s++}", "error", "unknown host '", w.host, "'");

	w.failed = json_array();
	if (!w.failed)
		return NULL;
	if (w.host && strcmp(w.host, cfg->node) != 0) {
		int64_t seq = 0;

		/* A peer whose manifest was never pulled may hold anything: say so. */
		if (catalog_max_seq(d->catalog, w.host, &seq) < 0 || seq == 0) {
			w.failures++;
			json_array_append_new(w.failed,
					      json_pack("{s:s, s:s, s:s}", "path", "", "host",
							w.host, "error",
							"host never reached: no manifest from it"));
		}
	}
	ret = catalog_foreach(d->catalog, NULL, walk_one, &w);
	if (ret < 0) {
		json_decref(w.failed);
		return json_pack("{s:s+}", "error", "catalog: ", strerror(-ret));
	}
	resp = json_pack("{s:I, s:I, s:I, s:I, s:I, s:o}", "files", w.files, "bytes", w.bytes,
			 "verified_files", w.verified_files, "verified_bytes", w.verified_bytes,
			 "failures", w.failures, "failed", w.failed);
	log_msg(LOG_INFO, "sync %s: %lld files matched, %lld local and verified, %lld failed",
		what ? what : "all", (long long)w.files, (long long)w.verified_files,
		(long long)w.failures);
	return resp;
}
