/* Forwarding of audit records to a syslog collector (RFC 5424), for a SIEM. Never
 * instead of the local log: a record is forwarded only after it is durable there, and
 * forwarding is best effort (a datagram that cannot be sent is counted as dropped; the
 * request is not failed, since the local log is the evidence).
 *
 * Each record goes as one datagram:
 *   <PRI>1 TIME HOST kmsd PID audit - <the record's JSON line>
 * PRI is facility authpriv (10) with severity info (6) for allowed calls and the log's
 * own records, notice (5) for denied ones and warning (4) for errors; TIME is the
 * record's own "time". Targets: "udp:HOST:PORT" (an IPv4 address, or an IPv6 one in
 * brackets) or "unix:PATH" (a datagram socket such as /dev/log). */
#ifndef KMS_AUDIT_SYSLOG_H
#define KMS_AUDIT_SYSLOG_H

#include <stddef.h>
#include <stdint.h>

#include "kms/base/err.h"

struct audit_syslog;

/* NULL when target is well-formed, else why not (for the config validator). */
const char *audit_syslog_target_problem(const char *target);

/* Opens a non-blocking datagram socket towards target. KMS_ERR_CONFIG for a malformed
 * target, KMS_ERR_IO if the socket cannot be made. */
KMS_WUR kms_err audit_syslog_open(const char *target, struct audit_syslog **out);

/* Sends each '\n'-terminated line of buf[0..len) as one message. Thread-compatible:
 * the audit log calls it from one thread at a time. */
void audit_syslog_send(struct audit_syslog *s, const char *buf, size_t len);

/* Messages sent and dropped since open (readable from any thread). */
void audit_syslog_counts(struct audit_syslog *s, uint64_t *sent, uint64_t *dropped);

void audit_syslog_close(struct audit_syslog *s); /* accepts NULL */

#endif
