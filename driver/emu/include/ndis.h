/* emulation stand-in for the WDK header */
#include "latch_emu.h"
