/*
 * meshfs — the one binary: `meshfs COMMAND ...` dispatches to the command's entry point.
 * mount lives in fs/mount.c; the commands that talk to a running daemon (status, sync,
 * check) or run without FUSE (serve) are here, thin over sync/.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs/fs.h"
#include "sync/config.h"
#include "sync/control.h"
#include "sync/daemon.h"
#include "sync/log.h"
#include "sync/status.h"
#include "sync/util.h"

struct command {
	const char *name;
	int (*main)(int argc, char **argv);
	const char *usage;
	const char *summary;
};

static int serve_main(int argc, char **argv);
static int status_main(int argc, char **argv);
static int sync_main(int argc, char **argv);
static int check_main(int argc, char **argv);
static int help_main(int argc, char **argv);

static const struct command commands[] = {
	{ "mount", mount_main, "mount -c CONFIG MOUNTPOINT [-f] [-o FUSEOPTS]",
	  "mount this node's view of the cluster (and run its data server)" },
	{ "serve", serve_main, "serve -c CONFIG",
	  "run the data server and catalog only, in the foreground" },
	{ "sync", sync_main,
	  "sync [all|games|models|training] [--board-type B] [--num-players N] "
	  "[--priority P] [--host H] [--no-wait] -c CONFIG",
	  "bring data up to date now and report what is local and verified" },
	{ "status", status_main, "status [--json] -c CONFIG", "show the node's data status" },
	{ "check", check_main, "check -c CONFIG",
	  "verify cached copies against their hashes; bad chunks are dropped and fetched again" },
	{ "help", help_main, "help [COMMAND]", "show help" },
};

static const struct command *find_command(const char *name)
{
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

static void print_usage(FILE *out)
{
	fprintf(out, "usage: meshfs COMMAND [OPTIONS]\n\ncommands:\n");
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(out, "  %-8s %s\n", commands[i].name, commands[i].summary);
	fprintf(out, "\n'meshfs help COMMAND' shows a command's options; 'meshfs --version' the "
		     "version.\n");
}

static int help_main(int argc, char **argv)
{
	const struct command *c;

	if (argc < 2) {
		print_usage(stdout);
		return 0;
	}
	c = find_command(argv[1]);
	if (!c) {
		fprintf(stderr, "meshfs help: unknown command '%s'\n", argv[1]);
		return 2;
	}
	printf("usage: meshfs %s\n\n%s\n", c->usage, c->summary);
	return 0;
}

/* Parses "-c CONFIG" plus the flags in @flags (each a long option without argument) for the
 * simple commands. Returns the index of the first non-option argument or -1. */
static int parse_common(int argc, char **argv, const char **cfg_path, bool *json)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "json", no_argument, NULL, 'j' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "c:", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			*cfg_path = optarg;
			break;
		case 'j':
			if (!json)
				return -1;
			*json = true;
			break;
		default:
			return -1;
		}
	}
	return *cfg_path ? optind : -1;
}

static int load_config(const char *cmd, const char *path, struct mfs_config **cfg)
{
	char err[1024];

	if (config_load(path, cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "meshfs %s: %s\n", cmd, err);
		return -1;
	}
	return 0;
}

static int status_main(int argc, char **argv)
{
	const char *cfg_path = NULL;
	struct mfs_config *cfg = NULL;
	json_t *req = NULL, *resp = NULL;
	bool json = false;
	int ret = 1, r;

	if (parse_common(argc, argv, &cfg_path, &json) != argc) {
		fprintf(stderr, "usage: meshfs status [--json] -c CONFIG\n");
		return 2;
	}
	if (load_config("status", cfg_path, &cfg) < 0)
		return 1;
	req = json_pack("{s:s}", "cmd", "status");
	r = req ? control_request(cfg->state_dir, req, &resp) : -ENOMEM;
	if (r < 0) {
		fprintf(stderr, "meshfs status: no meshfs daemon answers for node %s "
			"(socket %s/control.sock: %s)\n", cfg->node, cfg->state_dir, strerror(-r));
		goto out;
	}
	if (json) {
		char *text = json_dumps(resp, JSON_INDENT(2) | JSON_PRESERVE_ORDER);

		if (text)
			printf("%s\n", text);
		free(text);
	} else {
		status_print_human(resp, stdout);
	}
	ret = 0;
out:
	json_decref(req);
	json_decref(resp);
	config_free(cfg);
	return ret;
}

static int serve_main(int argc, char **argv)
{
	const char *cfg_path = NULL;
	struct mfs_config *cfg = NULL;
	struct daemon *d = NULL;
	char err[1024] = "";
	int lock_fd = -1, sig, ret = 1;
	sigset_t set;

	if (parse_common(argc, argv, &cfg_path, NULL) != argc) {
		fprintf(stderr, "usage: meshfs serve -c CONFIG\n");
		return 2;
	}
	if (load_config("serve", cfg_path, &cfg) < 0)
		return 1;
	/* Block the stop signals before any thread starts, so only sigwait() sees them. */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	umask(0);
	if (daemon_lock_state_dir(cfg, &lock_fd, err, sizeof(err)) < 0 ||
	    daemon_start(cfg, lock_fd, &d, err, sizeof(err)) < 0) {
		if (lock_fd >= 0 && !d)
			close(lock_fd);
		fprintf(stderr, "meshfs serve: %s\n", err);
		goto out;
	}
	log_msg(LOG_INFO, "node %s serving on %s:%d", cfg->node, cfg->listen_host,
		cfg->listen_port);
	if (sigwait(&set, &sig) == 0)
		log_msg(LOG_INFO, "node %s: stopping on signal %d", cfg->node, sig);
	ret = 0;
out:
	daemon_stop(d);
	config_free(cfg);
	return ret;
}

static void print_bytes(FILE *out, json_int_t bytes)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)bytes;
	size_t u = 0;

	while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
		v /= 1024;
		u++;
	}
	fprintf(out, u ? "%.1f %s" : "%.0f %s", v, units[u]);
}

static int sync_usage(void)
{
	fprintf(stderr, "usage: meshfs sync [all|games|models|training] [--board-type B] "
			"[--num-players N] [--priority low|normal|high|critical] [--host H] "
			"[--no-wait] -c CONFIG\n");
	return 2;
}

#define SYNC_REQUEST_TIMEOUT_MS (120 * 1000) /* the daemon walks the namespace first */
#define SYNC_POLL_MS 250
#define SYNC_PLAIN_EVERY_NS (2 * 1000000000LL) /* not a TTY: a line at most this often */
#define SYNC_PLAIN_QUIET_NS (10 * 1000000000LL) /* ... and at least this often */
#define SYNC_WAIT_SLACK_S 60 /* past the daemon's own bound for the job */
#define SYNC_RATE_SAMPLES 20 /* polls the rate is measured over (about 5 s) */

static json_int_t jint(json_t *obj, const char *key)
{
	return json_integer_value(json_object_get(obj, key));
}

/* "1:05:09", "4:10" or "7 s". */
static void print_duration(FILE *out, double seconds)
{
	long s = seconds > 0 ? (long)(seconds + 0.5) : 0;

	if (s >= 3600)
		fprintf(out, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
	else if (s >= 60)
		fprintf(out, "%ld:%02ld", s / 60, s % 60);
	else
		fprintf(out, "%ld s", s);
}

/* One progress line (no newline): files done/total, bytes done/total, rate, ETA. */
static void print_sync_progress(FILE *out, const char *what, json_t *p, double rate)
{
	json_int_t bytes = jint(p, "bytes"), fetched = jint(p, "fetched_bytes");

	fprintf(out, "sync %s: %lld/%lld files, ", what,
		(long long)(jint(p, "verified_files") + jint(p, "failures")),
		(long long)jint(p, "files"));
	print_bytes(out, fetched);
	fprintf(out, "/");
	print_bytes(out, bytes);
	if (rate > 0) {
		fprintf(out, ", ");
		print_bytes(out, (json_int_t)rate);
		fprintf(out, "/s, ETA ");
		print_duration(out, (double)(bytes - fetched) / rate);
	}
	if (jint(p, "failures"))
		fprintf(out, ", %lld failed", (long long)jint(p, "failures"));
}

/* Bytes per second over the last few seconds of samples (chunks land 4 MiB at a time). */
struct sync_rate {
	int64_t t[SYNC_RATE_SAMPLES];
	json_int_t bytes[SYNC_RATE_SAMPLES];
	size_t n, next;
};

static double sync_rate_add(struct sync_rate *sr, int64_t t, json_int_t bytes)
{
	size_t oldest;

	sr->t[sr->next] = t;
	sr->bytes[sr->next] = bytes;
	sr->next = (sr->next + 1) % SYNC_RATE_SAMPLES;
	if (sr->n < SYNC_RATE_SAMPLES)
		sr->n++;
	oldest = sr->n < SYNC_RATE_SAMPLES ? 0 : sr->next;
	if (sr->n < 2 || t <= sr->t[oldest])
		return 0;
	return (double)(bytes - sr->bytes[oldest]) * 1e9 / (double)(t - sr->t[oldest]);
}

/*
 * Polls the daemon about sync job *resp until it is finished, showing progress on stdout (one
 * line redrawn ~4 times a second on a TTY, a plain line every few seconds otherwise). On
 * return *resp is the last answer. 0 when the job finished, -1 (reason printed) otherwise.
 * The wait is bounded by the job's own bound (deadline_s, after which the daemon fails what
 * is left) plus SYNC_WAIT_SLACK_S.
 */
static int sync_wait(const struct mfs_config *cfg, const char *what, json_t **resp)
{
	bool tty = isatty(STDOUT_FILENO);
	json_int_t job = jint(*resp, "job"), line_done = -1;
	int64_t start = mono_ns(), last_line = start;
	int64_t bound_ns = (int64_t)(jint(*resp, "deadline_s") + SYNC_WAIT_SLACK_S) * 1000000000;
	struct sync_rate sr = { 0 };
	int ret = -1;

	sync_rate_add(&sr, start, jint(*resp, "fetched_bytes"));
	for (;;) {
		json_t *req, *next = NULL;
		json_int_t done;
		double rate;
		int64_t now;
		int r;

		poll(NULL, 0, SYNC_POLL_MS);
		req = json_pack("{s:s, s:I}", "cmd", "sync_progress", "job", job);
		r = req ? control_request(cfg->state_dir, req, &next) : -ENOMEM;
		json_decref(req);
		if (tty)
			printf("\r\033[K"); /* errors and the summary start on a clean line */
		if (r < 0) {
			fflush(stdout);
			fprintf(stderr, "meshfs sync: lost the daemon of node %s while waiting "
				"(socket %s/control.sock: %s)\n", cfg->node, cfg->state_dir,
				strerror(-r));
			break;
		}
		json_decref(*resp);
		*resp = next;
		if (json_object_get(next, "error")) {
			fflush(stdout);
			fprintf(stderr, "meshfs sync: %s\n",
				json_string_value(json_object_get(next, "error")));
			break;
		}
		if (json_is_true(json_object_get(next, "finished"))) {
			ret = 0;
			break;
		}
		now = mono_ns();
		rate = sync_rate_add(&sr, now, jint(next, "fetched_bytes"));
		done = jint(next, "fetched_bytes") + jint(next, "verified_files") +
		       jint(next, "failures");
		if (tty) {
			print_sync_progress(stdout, what, next, rate);
		} else if (now - last_line >= SYNC_PLAIN_EVERY_NS &&
			   (done != line_done || now - last_line >= SYNC_PLAIN_QUIET_NS)) {
			print_sync_progress(stdout, what, next, rate);
			printf("\n");
			last_line = now;
			line_done = done;
		}
		fflush(stdout);
		if (now - start > bound_ns) {
			fprintf(stderr,
				"meshfs sync: gave up waiting after %lld s; the daemon goes "
				"on fetching\n",
				(long long)((now - start) / 1000000000));
			break;
		}
	}
	fflush(stdout);
	return ret;
}

static void print_sync_failures(json_t *resp)
{
	json_t *failed = json_object_get(resp, "failed");
	json_int_t n = jint(resp, "failures");
	size_t i;

	for (i = 0; i < json_array_size(failed); i++) {
		json_t *f = json_array_get(failed, i);
		const char *host = json_string_value(json_object_get(f, "host"));

		printf("FAILED %s", json_string_value(json_object_get(f, "path")));
		if (host && *host)
			printf(" (from %s)", host);
		printf(": %s\n", json_string_value(json_object_get(f, "error")));
	}
	if ((json_int_t)i < n)
		printf("... and %lld more failed files\n", (long long)(n - (json_int_t)i));
}

static int sync_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "board-type", required_argument, NULL, 'b' },
		{ "num-players", required_argument, NULL, 'n' },
		{ "priority", required_argument, NULL, 'p' },
		{ "host", required_argument, NULL, 'H' },
		{ "no-wait", no_argument, NULL, 'w' },
		{ NULL, 0, NULL, 0 },
	};
	const char *cfg_path = NULL, *board = NULL, *prio = "normal", *host = NULL, *what = "all";
	struct mfs_config *cfg = NULL;
	json_t *req = NULL, *resp = NULL;
	bool no_wait = false;
	long players = 0;
	char *end;
	int c, r, ret = 1;
	size_t i;

	optind = 1;
	while ((c = getopt_long(argc, argv, "c:", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			cfg_path = optarg;
			break;
		case 'b':
			board = optarg;
			break;
		case 'n':
			players = strtol(optarg, &end, 10);
			if (*end || players < 1 || players > 64) {
				fprintf(stderr, "meshfs sync: --num-players takes a number "
						"from 1 to 64, not '%s'\n", optarg);
				return 2;
			}
			break;
		case 'p':
			prio = optarg;
			if (strcmp(prio, "low") && strcmp(prio, "normal") && strcmp(prio, "high") &&
			    strcmp(prio, "critical")) {
				fprintf(stderr, "meshfs sync: --priority is low, normal, high or "
						"critical, not '%s'\n", prio);
				return 2;
			}
			break;
		case 'H':
			host = optarg;
			break;
		case 'w':
			no_wait = true;
			break;
		default:
			return sync_usage();
		}
	}
	if (optind < argc)
		what = argv[optind++];
	if (optind < argc || !cfg_path)
		return sync_usage();
	if (load_config("sync", cfg_path, &cfg) < 0)
		return 1;
	if (strcmp(what, "all") != 0 && config_category_index(cfg, what) < 0) {
		fprintf(stderr, "meshfs sync: unknown category '%s' (all", what);
		for (i = 0; i < cfg->n_categories; i++)
			fprintf(stderr, ", %s", cfg->categories[i].name);
		fprintf(stderr, ")\n");
		ret = 2;
		goto out;
	}
	if (host && !config_find_host(cfg, host)) {
		fprintf(stderr, "meshfs sync: --host %s is not one of the hosts in %s\n", host,
			cfg->path);
		ret = 2;
		goto out;
	}
	req = json_pack("{s:s, s:s, s:s, s:b}", "cmd", "sync", "what", what, "priority", prio,
			"no_wait", no_wait);
	if (req && board)
		json_object_set_new(req, "board_type", json_string(board));
	if (req && players)
		json_object_set_new(req, "num_players", json_integer(players));
	if (req && host)
		json_object_set_new(req, "host", json_string(host));
	r = req ? control_request_timeout(cfg->state_dir, req, &resp, SYNC_REQUEST_TIMEOUT_MS)
		: -ENOMEM;
	if (r < 0) {
		fprintf(stderr, "meshfs sync: no meshfs daemon answers for node %s "
			"(socket %s/control.sock: %s)\n", cfg->node, cfg->state_dir, strerror(-r));
		goto out;
	}
	if (json_object_get(resp, "error")) {
		fprintf(stderr, "meshfs sync: %s\n",
			json_string_value(json_object_get(resp, "error")));
		ret = json_is_true(json_object_get(resp, "usage")) ? 2 : 1;
		goto out;
	}
	if (no_wait) {
		if (jint(resp, "queued_files")) {
			printf("sync %s: %lld %s (", what, (long long)jint(resp, "queued_files"),
			       jint(resp, "queued_files") == 1 ? "file" : "files");
			print_bytes(stdout, jint(resp, "queued_bytes"));
			printf(") queued for fetching at %s priority; ", prio);
		} else {
			printf("sync %s: nothing to fetch; ", what);
		}
		printf("%lld of %lld files local and verified\n",
		       (long long)jint(resp, "verified_files"), (long long)jint(resp, "files"));
		print_sync_failures(resp);
		ret = jint(resp, "failures") > 0 ? 1 : 0;
		goto out;
	}
	if (!json_is_true(json_object_get(resp, "finished")) && sync_wait(cfg, what, &resp) < 0)
		goto out;
	printf("sync %s: %lld of %lld files local and verified (", what,
	       (long long)jint(resp, "verified_files"), (long long)jint(resp, "files"));
	print_bytes(stdout, jint(resp, "verified_bytes"));
	printf(")\n");
	print_sync_failures(resp);
	ret = jint(resp, "failures") > 0 ? 1 : 0;
out:
	json_decref(req);
	json_decref(resp);
	config_free(cfg);
	return ret;
}

static int check_main(int argc, char **argv)
{
	const char *cfg_path = NULL;
	struct mfs_config *cfg = NULL;
	json_t *req = NULL, *resp = NULL, *bad, *b;
	size_t i;
	int ret = 1, r;

	if (parse_common(argc, argv, &cfg_path, NULL) != argc) {
		fprintf(stderr, "usage: meshfs check -c CONFIG\n");
		return 2;
	}
	if (load_config("check", cfg_path, &cfg) < 0)
		return 1;
	/* The daemon owns the cache; it verifies it while it keeps serving. */
	req = json_pack("{s:s}", "cmd", "check");
	r = req ? control_request_timeout(cfg->state_dir, req, &resp, 3600 * 1000) : -ENOMEM;
	if (r < 0) {
		fprintf(stderr, "meshfs check: no meshfs daemon answers for node %s "
			"(socket %s/control.sock: %s)\n", cfg->node, cfg->state_dir, strerror(-r));
		goto out;
	}
	if (json_object_get(resp, "error")) {
		fprintf(stderr, "meshfs check: %s\n",
			json_string_value(json_object_get(resp, "error")));
		goto out;
	}
	bad = json_object_get(resp, "bad");
	json_array_foreach(bad, i, b)
		printf("BAD %s/%s: %s (quarantined: fetched again when read)\n",
		       json_string_value(json_object_get(b, "category")),
		       json_string_value(json_object_get(b, "path")),
		       json_string_value(json_object_get(b, "problem")));
	printf("meshfs check: %lld cached versions verified, %zu bad\n",
	       (long long)json_integer_value(json_object_get(resp, "checked")),
	       json_array_size(bad));
	ret = json_array_size(bad) ? 1 : 0;
out:
	json_decref(req);
	json_decref(resp);
	config_free(cfg);
	return ret;
}

int main(int argc, char **argv)
{
	const struct command *c;
	const char *level = getenv("MESHFS_LOG_LEVEL");

	if (level && log_parse_level(level) >= 0)
		log_set_level(log_parse_level(level));
	if (argc < 2) {
		print_usage(stderr);
		return 2;
	}
	if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
		printf("meshfs %s\n", MESHFS_VERSION);
		return 0;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		print_usage(stdout);
		return 0;
	}
	c = find_command(argv[1]);
	if (!c) {
		fprintf(stderr, "meshfs: unknown command '%s'\n\n", argv[1]);
		print_usage(stderr);
		return 2;
	}
	return c->main(argc - 1, argv + 1);
}
