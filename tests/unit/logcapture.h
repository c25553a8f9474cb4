/*
 * logcapture — a log sink for unit tests: install capture_sink with log_set_sink(), then ask
 * whether a line was logged. The buffer keeps the latest 64 KiB of lines.
 */
#ifndef MESHFS_LOGCAPTURE_H
#define MESHFS_LOGCAPTURE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static pthread_mutex_t cap_lock = PTHREAD_MUTEX_INITIALIZER;
static char cap_buf[1 << 16]; /* protected by cap_lock */

static inline void capture_sink(int level, const char *line, void *arg)
{
	size_t used, len = strlen(line);

	pthread_mutex_lock(&cap_lock);
	used = strlen(cap_buf);
	if (used + len + 2 > sizeof(cap_buf)) {
		cap_buf[0] = '\0';
		used = 0;
	}
	if (len + 2 <= sizeof(cap_buf)) {
		memcpy(cap_buf + used, line, len);
		cap_buf[used + len] = '\n';
		cap_buf[used + len + 1] = '\0';
	}
	pthread_mutex_unlock(&cap_lock);
}

static inline void cap_reset(void)
{
	pthread_mutex_lock(&cap_lock);
	cap_buf[0] = '\0';
	pthread_mutex_unlock(&cap_lock);
}

/* True when @needle is in the captured log; says what the log held when it is not. */
static inline bool cap_has(const char *needle)
{
	bool found;

	pthread_mutex_lock(&cap_lock);
	found = strstr(cap_buf, needle) != NULL;
	pthread_mutex_unlock(&cap_lock);
	if (!found)
		fprintf(stderr, "log has no \"%s\"; log was:\n%s", needle, cap_buf);
	return found;
}

#endif
