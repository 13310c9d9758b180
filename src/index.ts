/**
 * marvel: the MARVEL / TiTok 1D image tokenizer for Node.js. Model math runs in a Rust (candle) native
 * addon off the main thread; this package is its typed TypeScript API.
 */
export { type Device } from './device.js'
export { MarvelError, type MarvelErrorCode } from './errors.js'
export { encodePng, prepareImage, readImage, writePng, type ImageSource, type PrepareOptions, type RawImage, type RgbImage } from './image.js'
export { compare, type ImageScores } from './metrics.js'
export { lfqLosses, lfqQuantize, type LfqLosses, type LfqOptions, type LfqQuantized } from './lfq.js'
export { MaskgitVqgan, type MaskgitEncodeOptions, type MaskgitInfo } from './maskgit.js'
export { type Tensor } from './tensor.js'
export { Tokens, type TokensJSON, type TokensShape } from './tokens.js'
export {
  Tokenizer,
  createRandomModel,
  marvelFromTitok,
  type DecodeOptions,
  type DecodedImage,
  type EncodeOptions,
  type FromPretrainedOptions,
  type ImageInput,
  type TokenizerInfo,
} from './tokenizer.js'
export { getNumThreads, setNumThreads } from './threads.js'
export {
  evaluate,
  type CodecEvaluation,
  type DepthEvaluation,
  type EvalInput,
  type EvalReport,
  type EvaluateOptions,
} from './eval/evaluate.js'
export { type CodecVariant } from './eval/codecs.js'
export { frechetDistance } from './eval/inception.js'
export {
  parseMetricsLog,
  rateDistortionChart,
  renderChart,
  trainingChart,
  type ChartSpec,
  type Panel,
  type Series,
  type TrainingCurves,
} from './chart/index.js'
export { makeShards, type MadeShards, type MakeShardsOptions } from './data/make-shards.js'
export { train, type StepReport, type TrainOptions, type TrainResult } from './train/loop.js'
export { type TrainingSink } from './train/log.js'
export { loadTrainingConfig } from './train/yaml-config.js'
export { Trainer, type GradientsResult, type StepOptions, type TrainStepResult, type TrainerCreateOptions } from './trainer.js'

export {
  HubError,
  createProgressPrinter,
  hubDownload,
  resolveModelFiles,
  snapshotDownload,
  type HubOptions,
  type HubProgress,
} from './hub.js'
