//! Small standalone tensor operations exposed to JavaScript. `matmul` is the dense kernel every model layer
//! here reduces to, so it doubles as the measure of the machine's sgemm ceiling in `bench/`.

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::shape_mismatch;
use crate::tensor::{tensor_from_slice, HostTensor};

/// Batched matrix product of two row-major float32 tensors `(..., m, k) x (..., k, n)`; leading batch
/// dimensions must be equal.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (sa, sb) = (a.dims(), b.dims());
    let (ra, rb) = (sa.len(), sb.len());
    if ra < 2 || ra != rb {
        return Err(shape_mismatch!(
            "matmul needs two tensors of the same rank >= 2, got {:?} and {:?}",
            sa,
            sb
        ));
    }
    if sa[..ra - 2] != sb[..rb - 2] || sa[ra - 1] != sb[rb - 2] {
        return Err(shape_mismatch!("matmul: {sa:?} x {sb:?} do not fit"));
    }
    // gemm wants contiguous operands; views from callers may be strided.
    Ok(a.contiguous()?.matmul(&b.contiguous()?)?)
}

/// [`matmul`] on host buffers (row-major data with their shapes), as the bindings hold them; `a` and `b` name the
/// operands in shape errors.
pub fn matmul_host(a: &[f32], a_shape: &[usize], b: &[f32], b_shape: &[usize]) -> Result<HostTensor<f32>> {
    let a = tensor_from_slice("a", a, a_shape, &Device::Cpu)?;
    let b = tensor_from_slice("b", b, b_shape, &Device::Cpu)?;
    HostTensor::from_tensor(&matmul(&a, &b)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(data: Vec<f32>, shape: &[usize]) -> Tensor {
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn matmul_matches_hand_computation() {
        let a = t(vec![1., 2., 3., 4., 5., 6.], &[2, 3]);
        let b = t(vec![7., 8., 9., 10., 11., 12.], &[3, 2]);
        let c = matmul(&a, &b).unwrap();
        assert_eq!(c.to_vec2::<f32>().unwrap(), vec![vec![58., 64.], vec![139., 154.]]);
    }

    #[test]
    fn matmul_rejects_mismatched_inner_dims() {
        let a = t(vec![0.; 6], &[2, 3]);
        let err = matmul(&a, &a).unwrap_err();
        assert_eq!(err.code(), "MARVEL_SHAPE_MISMATCH");
        assert!(err.to_string().contains("[2, 3] x [2, 3]"), "{err}");
    }

    #[test]
    fn matmul_host_checks_buffers_then_multiplies() {
        let c = matmul_host(&[1., 2., 3., 4.], &[2, 2], &[5., 6., 7., 8.], &[2, 2]).unwrap();
        assert_eq!((c.shape, c.data), (vec![2, 2], vec![19., 22., 43., 50.]));
        let err = matmul_host(&[0.; 5], &[2, 3], &[0.; 6], &[3, 2]).unwrap_err();
        assert!(err.to_string().contains("a: shape [2, 3] needs 6 elements"), "{err}");
    }
}
