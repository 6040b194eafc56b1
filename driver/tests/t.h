/* A small test framework for the driver tests. */
#ifndef LATCH_T_H
#define LATCH_T_H

#include <stdio.h>

#include "emu_harness.h"
#include "../include/latch_proto.h"

typedef struct test_case {
    const char *name;
    const char *group;
    void (*fn)(void);
    int driver; /* needs emu_reset / violation checks around it */
} test_case;

extern int t_failed;            /* failures in the current test */
extern const char *t_golden_dir;
extern const char *t_sim_path;
extern int t_update;
extern int t_fuzz_seeds;              /* --seeds N: schedules the fuzzer runs (default 100) */
extern unsigned long long t_fuzz_seed; /* --seed S: run that one schedule only */

#define CHECK(cond, ...)                                                                                         \
    do {                                                                                                         \
        if (!(cond)) {                                                                                           \
            t_failed++;                                                                                          \
            fprintf(stderr, "    FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                                  \
            fprintf(stderr, __VA_ARGS__);                                                                        \
            fprintf(stderr, "\n");                                                                               \
        }                                                                                                        \
    } while (0)
#define REQUIRE(cond, ...)                                                                                       \
    do {                                                                                                         \
        int require_ok_ = (cond) ? 1 : 0;                                                                        \
        CHECK(require_ok_, __VA_ARGS__);                                                                         \
        if (!require_ok_) {                                                                                      \
            return;                                                                                              \
        }                                                                                                        \
    } while (0)

/* test lists, defined by each test file */
extern const test_case proto_tests[];
extern const test_case driver_tests[];

void t_death(void); /* main.c: names the running test when a sanitizer ends the process */

/* helpers (test_driver.c) */
void t_tmp_path(char *out, size_t n, const char *name);

#endif
