/* cudasim's profiler calls (see cuda_runtime.h beside this): no profiler watches a simulated device,
 * so they only check that no stream is capturing, as a GPU's would refuse. */
#ifndef SPECD_CUDASIM_CUDA_PROFILER_API_H
#define SPECD_CUDASIM_CUDA_PROFILER_API_H

#include "cuda_runtime.h"

cudaError_t cudaProfilerStart(void);
cudaError_t cudaProfilerStop(void);

#endif
