/*
 * status — what the node reports about itself: the root `user.meshfs.health` JSON,
 * `user.meshfs.lag`, and the `meshfs status --json` report (INTERFACE.md lists the keys).
 * Each call takes a consistent snapshot from the subsystems and returns new JSON; nothing is
 * cached and no lock is held on return.
 */
#ifndef MESHFS_STATUS_H
#define MESHFS_STATUS_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

struct daemon;

json_t *status_health(struct daemon *d);
json_t *status_report(struct daemon *d);
/* Seconds since the oldest active host's manifest was last confirmed. */
int64_t status_lag(struct daemon *d);

/* Prints @report (from status_report) for people, as `meshfs status` does. */
void status_print_human(json_t *report, FILE *out);

#endif
