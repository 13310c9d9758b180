//! Host tensors: a flat buffer plus a shape, the form in which data crosses the Node boundary. Shapes are
//! checked here once, so the model code can assume a consistent layout.

use candle_core::{DType, Device, Tensor, WithDType};

use crate::error::{MarvelError, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor<T> {
    pub data: Vec<T>,
    pub shape: Vec<usize>,
}

/// Check that `len` elements fill `shape` exactly; `what` names the argument in the error.
pub fn check_shape(what: &str, len: usize, shape: &[usize]) -> Result<()> {
    let mut expected: usize = 1;
    for &d in shape {
        expected = expected.checked_mul(d).ok_or_else(|| {
            MarvelError::ShapeMismatch(format!("{what}: shape {shape:?} overflows the address space"))
        })?;
    }
    if expected != len {
        return Err(MarvelError::ShapeMismatch(format!(
            "{what}: shape {shape:?} needs {expected} elements but the buffer holds {len}"
        )));
    }
    Ok(())
}

/// Build a tensor from a borrowed buffer (one copy, into candle's storage) after checking the shape.
pub fn tensor_from_slice<T: WithDType>(what: &str, data: &[T], shape: &[usize], device: &Device) -> Result<Tensor> {
    check_shape(what, data.len(), shape)?;
    Ok(Tensor::from_slice(data, shape, device)?)
}

impl<T: WithDType> HostTensor<T> {
    pub fn new(what: &str, data: Vec<T>, shape: Vec<usize>) -> Result<Self> {
        check_shape(what, data.len(), &shape)?;
        Ok(Self { data, shape })
    }

    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(&self.data, self.shape.as_slice(), device)?)
    }

    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let shape = t.dims().to_vec();
        let t = t.to_dtype(T::DTYPE)?.flatten_all()?;
        Ok(Self { data: t.to_vec1::<T>()?, shape })
    }
}

/// Float32 view of the data for tensors whose dtype is not known statically.
pub fn to_f32_host(t: &Tensor) -> Result<HostTensor<f32>> {
    if t.dtype() != DType::F32 {
        return HostTensor::from_tensor(&t.to_dtype(DType::F32)?);
    }
    HostTensor::from_tensor(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_must_cover_the_buffer_exactly() {
        assert!(HostTensor::new("x", vec![0f32; 6], vec![2, 3]).is_ok());
        let err = HostTensor::new("x", vec![0f32; 5], vec![2, 3]).unwrap_err();
        assert_eq!(err.code(), "MARVEL_SHAPE_MISMATCH");
        assert!(err.to_string().contains("[2, 3] needs 6 elements but the buffer holds 5"), "{err}");
        let err = check_shape("y", 1, &[usize::MAX, 2]).unwrap_err();
        assert!(err.to_string().contains("overflows"));
    }

    #[test]
    fn round_trips_through_candle() {
        let h = HostTensor::new("x", (0..12).map(|v| v as f32).collect(), vec![3, 4]).unwrap();
        let t = h.to_tensor(&Device::Cpu).unwrap();
        assert_eq!(HostTensor::<f32>::from_tensor(&t).unwrap(), h);
    }
}
