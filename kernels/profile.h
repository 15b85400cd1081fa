/* kernels-internal: the profiling wrapper that kern_backend_create puts around a backend made with
 * kern_backend_config.profile (kernels/profile.c). */
#ifndef SPECD_KERNELS_PROFILE_H
#define SPECD_KERNELS_PROFILE_H

#include "kernels/backend.h"

/* *out forwards every op to inner and owns it (destroying *out destroys inner). */
int kern_profile_wrap(struct kern_backend *inner, struct kern_backend **out);

#endif
