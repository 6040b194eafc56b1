/* Loading and unloading the driver under the emulation, and the post-unload checks. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "emu_harness.h"

static DRIVER_OBJECT driverObject;
PDRIVER_OBJECT emu_driver_object = &driverObject;
static WCHAR registryPathBuffer[] = L"\\Registry\\Machine\\System\\CurrentControlSet\\Services\\latch";
UNICODE_STRING emu_registry_path = {sizeof(registryPathBuffer) - sizeof(WCHAR), sizeof(registryPathBuffer),
                                    registryPathBuffer};
static int loaded;

int emu_driver_loaded(void) { return loaded; }

void emu_reset(void)
{
    emu_flt_shutdown_all();
    emu_wfp_reset();
    emu_flt_reset();
    emu_kernel_reset();
    emu_fault_fail_site(NULL);
    emu_fault_record(0);
    memset(&driverObject, 0, sizeof(driverObject));
    loaded = 0;
}

NTSTATUS emu_load(DRIVER_INITIALIZE *entry)
{
    if (KeGetCurrentIrql() != PASSIVE_LEVEL) {
        emu_violation("emu_load: the harness thread is not at PASSIVE_LEVEL");
    }
    NTSTATUS st = entry(&driverObject, &emu_registry_path);
    if (KeGetCurrentIrql() != PASSIVE_LEVEL) {
        emu_violation("DriverEntry returned at IRQL %d", KeGetCurrentIrql());
    }
    loaded = NT_SUCCESS(st);
    return st;
}

void emu_check_clean(const char *when)
{
    (void)when;
    emu_wfp_check_clean();
    emu_flt_check_clean();
    emu_kernel_check_clean();
}

/* The unload watchdog: an unload that has not returned after LATCH_EMU_UNLOAD_WATCHDOG_MS
   (default 15000) is a hang on Windows (the service stop never returns, a shutdown
   bugchecks 0x9F). Instead of hanging the suite the watchdog prints what is still
   alive and ends the process with status 3. */
static pthread_mutex_t wdLock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wdCond = PTHREAD_COND_INITIALIZER;
static int wdDone;
static const char *currentTest = "?";

void emu_set_test_name(const char *name) { currentTest = name != NULL ? name : "?"; }

static void *unload_watchdog(void *arg)
{
    long ms = (long)(size_t)arg;
    struct timespec due;
    clock_gettime(CLOCK_REALTIME, &due);
    due.tv_sec += ms / 1000;
    due.tv_nsec += (ms % 1000) * 1000000L;
    if (due.tv_nsec >= 1000000000L) {
        due.tv_sec++;
        due.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&wdLock);
    int timedOut = 0;
    while (!wdDone && !timedOut) {
        timedOut = pthread_cond_timedwait(&wdCond, &wdLock, &due) != 0 && !wdDone;
    }
    pthread_mutex_unlock(&wdLock);
    if (timedOut) {
        char live[2048];
        emu_wfp_describe_live(live, sizeof(live));
        emu_set_quiet(0);
        emu_violation("unload watchdog (test %s): DriverUnload has not returned after %ld ms (a hang on Windows); "
                      "still alive: %s; %d system thread(s) running; first violation: %s", currentTest, ms, live,
                      emu_threads_running(), emu_violation_count() > 0 ? emu_violation_text(0) : "none");
        fflush(stdout);
        fflush(stderr);
        _exit(3);
    }
    return NULL;
}

int emu_unload(void)
{
    if (!loaded) {
        emu_violation("emu_unload: the driver is not loaded");
        return emu_violation_count();
    }
    if (driverObject.DriverUnload == NULL) {
        emu_violation("the driver has no unload routine: it could never be stopped");
    } else {
        const char *env = getenv("LATCH_EMU_UNLOAD_WATCHDOG_MS");
        long ms = env != NULL && atol(env) > 0 ? atol(env) : 15000;
        pthread_t wd;
        wdDone = 0;
        int started = pthread_create(&wd, NULL, unload_watchdog, (void *)(size_t)ms) == 0;
        driverObject.DriverUnload(&driverObject);
        pthread_mutex_lock(&wdLock);
        wdDone = 1;
        pthread_cond_broadcast(&wdCond);
        pthread_mutex_unlock(&wdLock);
        if (started) {
            pthread_join(wd, NULL);
        }
    }
    if (KeGetCurrentIrql() != PASSIVE_LEVEL) {
        emu_violation("DriverUnload returned at IRQL %d", KeGetCurrentIrql());
    }
    loaded = 0;
    emu_check_clean("unload");
    return emu_violation_count();
}
