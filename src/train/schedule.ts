/** Learning-rate schedules: linear warm-up, then constant or cosine down to a final value. */
export interface ScheduleOptions {
  lr: number;
  lrFinal: number;
  warmupSteps: number;
  totalSteps: number;
  kind: 'cosine' | 'constant';
}

export function learningRate(step: number, o: ScheduleOptions): number {
  if (o.warmupSteps > 0 && step < o.warmupSteps) return (o.lr * (step + 1)) / o.warmupSteps;
  if (o.kind === 'constant') return o.lr;
  const span = Math.max(1, o.totalSteps - o.warmupSteps);
  const progress = Math.min(1, Math.max(0, (step - o.warmupSteps) / span));
  return o.lrFinal + 0.5 * (o.lr - o.lrFinal) * (1 + Math.cos(Math.PI * progress));
}
