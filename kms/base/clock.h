/* Wall-clock time for every decision that depends on it (token expiry, waiting periods,
 * retention, rotation by age). One function so that tests can move time instead of
 * sleeping: when the environment variable KMSD_TEST_CLOCK_FILE names a file, its content
 * (a signed number of seconds) is added to the real time, re-read whenever the file
 * changes. kmsd announces this loudly at start and in /v1/sys/health. */
#ifndef KMS_BASE_CLOCK_H
#define KMS_BASE_CLOCK_H

#include <stdbool.h>
#include <stdint.h>

/* Unix seconds, with the test offset if one is configured. */
int64_t kms_now(void);

/* True when the test clock is in use. */
bool kms_clock_is_test(void);

/* Milliseconds of CLOCK_MONOTONIC, for intervals (cache ages, rate refills, staleness);
 * never shifted by the test clock. */
int64_t kms_mono_ms(void);

#endif
