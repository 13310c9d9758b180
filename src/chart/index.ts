export { PALETTE, drawChart, formatTick, layoutChart, niceTicks, renderChart, toPixel, type ChartSpec, type Panel, type PanelLayout, type Rgb, type Series } from './chart.js'
export { parseMetricsLog, trainingChart, type TrainingCurves } from './curves.js'
export { rateDistortionChart } from './rd.js'
