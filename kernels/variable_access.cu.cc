// The device-to-device copy that variable_access.h declares for TensorFlow's
// copy-on-write helpers on the GPU, instantiated for every variable dtype of
// the library's ops (the rowwise accumulators' float32 and float64 among
// them, and the moving average's int64 step counts).
#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include "kernels/variable_access.h"

#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor_types.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace tensorflow {
namespace functor {

template <typename T>
void DenseUpdate<Eigen::GpuDevice, T, ASSIGN>::operator()(
    const Eigen::GpuDevice& device, typename TTypes<T>::Flat params,
    typename TTypes<T>::ConstFlat update) {
  device.memcpy(params.data(), update.data(), params.size() * sizeof(T));
}

#define INSTANTIATE_DENSE_UPDATE(T) \
  template struct DenseUpdate<Eigen::GpuDevice, T, ASSIGN>;
TF_CALL_FLOAT_TYPES(INSTANTIATE_DENSE_UPDATE)
INSTANTIATE_DENSE_UPDATE(int64_t)
#undef INSTANTIATE_DENSE_UPDATE

}  // namespace functor
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
