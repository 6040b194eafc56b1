/* Loading and unloading the driver under the emulation, and the post-unload checks. */
#include <stdio.h>
#include <stdlib.h>

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

int emu_unload(void)
{
    if (!loaded) {
        emu_violation("emu_unload: the driver is not loaded");
        return emu_violation_count();
    }
    if (driverObject.DriverUnload == NULL) {
        emu_violation("the driver has no unload routine: it could never be stopped");
    } else {
        driverObject.DriverUnload(&driverObject);
    }
    if (KeGetCurrentIrql() != PASSIVE_LEVEL) {
        emu_violation("DriverUnload returned at IRQL %d", KeGetCurrentIrql());
    }
    loaded = 0;
    emu_check_clean("unload");
    return emu_violation_count();
}
