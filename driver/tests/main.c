/*
 * Test runner: `latch-tests [--golden DIR] [--update] [--sim PATH] [--only GROUP|NAME]`.
 * Every driver test starts from a reset emulation and fails if the verifier recorded
 * anything it did not expect. The last line is "N passed, M failed" (CI reads it).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sanitizer/common_interface_defs.h>

#include "t.h"

int t_failed;
const char *t_golden_dir = "../internal/proto/testdata";
const char *t_sim_path = "./build/latch-sim";
int t_update;
int t_fuzz_seeds = 100;
unsigned long long t_fuzz_seed;

static const char *currentName = "?";

/* ASan or UBSan ending the process names the test it ended. */
void t_death(void)
{
    printf("FAIL %-40s (the process died: see the sanitizer report above)\n", currentName);
    fflush(stdout);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    const char *only = NULL;
    int fail_fast = 0; /* stop at the first failing test (the mutation check) */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--golden") == 0 && i + 1 < argc) {
            t_golden_dir = argv[++i];
        } else if (strcmp(argv[i], "--sim") == 0 && i + 1 < argc) {
            t_sim_path = argv[++i];
        } else if (strcmp(argv[i], "--seeds") == 0 && i + 1 < argc) {
            t_fuzz_seeds = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            t_fuzz_seed = strtoull(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--fail-fast") == 0) {
            fail_fast = 1;
        } else if (strcmp(argv[i], "--update") == 0) {
            t_update = 1;
        } else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            only = argv[++i];
        } else {
            fprintf(stderr, "usage: latch-tests [--golden DIR] [--update] [--sim PATH] [--only GROUP|NAME] [--fail-fast] [--seeds N] [--seed S]\n");
            return 2;
        }
    }
    const test_case *lists[] = {proto_tests, driver_tests};
    int passed = 0, failed = 0;
    double start = now();
    __sanitizer_set_death_callback(t_death);
    for (size_t l = 0; l < sizeof(lists) / sizeof(lists[0]); l++) {
        for (const test_case *t = lists[l]; t->name != NULL; t++) {
            if (only != NULL && strcmp(only, t->group) != 0 && strcmp(only, t->name) != 0) {
                continue;
            }
            double t0 = now();
            t_failed = 0;
            emu_set_test_name(t->name);
            currentName = t->name;
            if (t->driver) {
                emu_reset();
                emu_clear_violations();
                emu_registry_clear();
                emu_set_quiet(0);
            }
            t->fn();
            if (t->driver) {
                if (emu_driver_loaded()) {
                    CHECK(0, "the test left the driver loaded");
                    emu_unload();
                }
                int v = emu_violation_count();
                if (v != 0) {
                    t_failed++;
                    fprintf(stderr, "    FAIL: %d verifier violation(s), first: %s\n", v, emu_violation_text(0));
                }
                emu_reset();
                emu_clear_violations();
            }
            if (t_failed == 0) {
                passed++;
                printf("ok   %-40s %6.2fs\n", t->name, now() - t0);
            } else {
                failed++;
                printf("FAIL %-40s %6.2fs (%d check(s) failed)\n", t->name, now() - t0, t_failed);
            }
            fflush(stdout);
            if (fail_fast && failed > 0) {
                goto done;
            }
        }
    }
done:
    printf("total time %.1fs\n", now() - start);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 && passed > 0 ? 0 : 1;
}
