/* Operational log to stderr (journald picks it up). Never pass secrets. */
#ifndef KMS_BASE_LOG_H
#define KMS_BASE_LOG_H

#include "kms/base/err.h"

enum kms_log_level { KMS_LOG_DEBUG, KMS_LOG_INFO, KMS_LOG_WARN, KMS_LOG_ERROR };

void kms_log_set_level(enum kms_log_level lvl);
void kms_log(enum kms_log_level lvl, const char *fmt, ...) KMS_PRINTF(2, 3);

#define kms_info(...) kms_log(KMS_LOG_INFO, __VA_ARGS__)
#define kms_warn(...) kms_log(KMS_LOG_WARN, __VA_ARGS__)
#define kms_error(...) kms_log(KMS_LOG_ERROR, __VA_ARGS__)
#define kms_debug(...) kms_log(KMS_LOG_DEBUG, __VA_ARGS__)

#endif
