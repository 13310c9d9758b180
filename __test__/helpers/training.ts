/** A tiny `single`-recipe training config (32x32 MARVEL, 3 depths) and generated images, shared by the trainer specs. */

export function tinyTrainingConfig(training: Record<string, unknown> = {}) {
  const lr = 2e-3
  return {
    model: {
      vq_model: {
        quantize_mode: 'lfq', token_size: 6, num_depths: 3, num_latent_tokens: 4,
        entropy_loss_weight: 0.02, entropy_loss_temperature: 0.01, entropy_gamma: 1.0, depth_dropout: 0.5,
        vit_enc_model_size: 'custom', vit_enc_width: 32, vit_enc_num_layers: 1, vit_enc_num_heads: 2,
        vit_dec_model_size: 'custom', vit_dec_width: 32, vit_dec_num_layers: 1, vit_dec_num_heads: 2,
        vit_enc_patch_size: 8, vit_dec_patch_size: 8, is_legacy: false, finetune_decoder: false,
      },
    },
    dataset: { preprocessing: { crop_size: 32 } },
    losses: { quantizer_weight: 1.0, reconstruction_loss: 'l2', reconstruction_weight: 1.0 },
    optimizer: { name: 'adamw', params: { learning_rate: lr, beta1: 0.9, beta2: 0.99, weight_decay: 1e-4 } },
    lr_scheduler: { scheduler: 'cosine', params: { learning_rate: lr, warmup_steps: 5, end_lr: lr / 10 } },
    training: { gradient_accumulation_steps: 1, use_ema: true, max_train_steps: 100, max_grad_norm: 1.0, ...training },
  }
}

/** `n` distinct 32x32 RGB images, [n, 32, 32, 3] bytes. */
export function images(n: number, size = 32): Uint8Array {
  const data = new Uint8Array(n * size * size * 3)
  for (let i = 0; i < data.length; i++) {
    const px = (i / 3) | 0
    data[i] = Math.round(127 + 110 * Math.sin((px % size) * 0.3 + ((px / size) | 0) * 0.2 + (i % 3) + ((px / size / size) | 0) * 1.7))
  }
  return data
}
