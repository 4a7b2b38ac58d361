/**
 * Constant-velocity Kalman filter on a box's (cx, cy, aspect w/h, height),
 * as in SORT/DeepSORT/ByteTrack: state x = [cx, cy, a, h, vcx, vcy, va, vh],
 * noise scaled by the box height. Each track owns a Float64Array(8) mean and a
 * Float64Array(64) row-major covariance; the block structure of F = [[I, I], [0, I]]
 * is written out, so a predict or update is a few hundred flops and no allocation.
 */

const W_POS = 1 / 20;
const W_VEL = 1 / 160;

/**
 * Fresh mean and covariance for a track first seen at box `z` = [cx, cy, a, h].
 * @example
 * const mean = new Float64Array(8), cov = new Float64Array(64);
 * kalmanInit([100, 200, 0.5, 80], mean, cov);
 */
export function kalmanInit(z: ArrayLike<number>, mean: Float64Array, cov: Float64Array): void {
  const h = z[3];
  mean.set([z[0], z[1], z[2], z[3], 0, 0, 0, 0]);
  const std = [2 * W_POS * h, 2 * W_POS * h, 1e-2, 2 * W_POS * h, 10 * W_VEL * h, 10 * W_VEL * h, 1e-5, 10 * W_VEL * h];
  cov.fill(0);
  for (let i = 0; i < 8; i++) cov[i * 9] = std[i] * std[i];
}

/**
 * One time step: x ← F x, P ← F P Fᵀ + Q.
 * @example
 * const mean = new Float64Array(8), cov = new Float64Array(64);
 * kalmanInit([100, 200, 0.5, 80], mean, cov);
 * kalmanPredict(mean, cov);
 */
export function kalmanPredict(mean: Float64Array, cov: Float64Array): void {
  const h = mean[3];
  for (let i = 0; i < 4; i++) mean[i] += mean[i + 4];
  // With P = [[A, B], [L, C]]: F P Fᵀ = [[A + B + L + C, B + C], [L + C, C]] (A first: it reads the old B and L).
  for (let i = 0; i < 4; i++) {
    for (let j = 0; j < 4; j++) cov[i * 8 + j] += cov[i * 8 + j + 4] + cov[(i + 4) * 8 + j] + cov[(i + 4) * 8 + j + 4];
  }
  for (let i = 0; i < 4; i++) {
    for (let j = 0; j < 4; j++) {
      const c = cov[(i + 4) * 8 + j + 4];
      cov[i * 8 + j + 4] += c;
      cov[(i + 4) * 8 + j] += c;
    }
  }
  const qp = W_POS * h;
  const qv = W_VEL * h;
  cov[0] += qp * qp;
  cov[9] += qp * qp;
  cov[18] += 1e-4;
  cov[27] += qp * qp;
  cov[36] += qv * qv;
  cov[45] += qv * qv;
  cov[54] += 1e-10;
  cov[63] += qv * qv;
}

const S = new Float64Array(16);
const X = new Float64Array(32);
const HP = new Float64Array(32);

/**
 * Corrects the state with a measured box `z` = [cx, cy, a, h]:
 * S = H P Hᵀ + R, K = P Hᵀ S⁻¹, x += K (z − H x), P −= K H P.
 * @example
 * kalmanUpdate(mean, cov, [102, 201, 0.5, 81]);
 */
export function kalmanUpdate(mean: Float64Array, cov: Float64Array, z: ArrayLike<number>): void {
  const rp = W_POS * mean[3];
  const r = [rp * rp, rp * rp, 1e-2, rp * rp];
  for (let i = 0; i < 4; i++) for (let j = 0; j < 4; j++) S[i * 4 + j] = cov[i * 8 + j] + (i === j ? r[i] : 0);
  // Cholesky S = L Lᵀ in place (lower triangle); S is symmetric positive definite.
  for (let j = 0; j < 4; j++) {
    let d = S[j * 4 + j];
    for (let k = 0; k < j; k++) d -= S[j * 4 + k] * S[j * 4 + k];
    const ljj = Math.sqrt(d);
    S[j * 4 + j] = ljj;
    for (let i = j + 1; i < 4; i++) {
      let s = S[i * 4 + j];
      for (let k = 0; k < j; k++) s -= S[i * 4 + k] * S[j * 4 + k];
      S[i * 4 + j] = s / ljj;
    }
  }
  // X = S⁻¹ (H P), a 4×8 matrix: Kᵀ, because S and P are symmetric.
  for (let c = 0; c < 8; c++) {
    for (let i = 0; i < 4; i++) {
      let s = cov[i * 8 + c];
      for (let k = 0; k < i; k++) s -= S[i * 4 + k] * X[k * 8 + c];
      X[i * 8 + c] = s / S[i * 4 + i];
    }
    for (let i = 3; i >= 0; i--) {
      let s = X[i * 8 + c];
      for (let k = i + 1; k < 4; k++) s -= S[k * 4 + i] * X[k * 8 + c];
      X[i * 8 + c] = s / S[i * 4 + i];
    }
  }
  const y0 = z[0] - mean[0], y1 = z[1] - mean[1], y2 = z[2] - mean[2], y3 = z[3] - mean[3];
  for (let i = 0; i < 8; i++) mean[i] += X[i] * y0 + X[8 + i] * y1 + X[16 + i] * y2 + X[24 + i] * y3;
  // P −= K (H P), where H P is the first four rows of the old P.
  HP.set(cov.subarray(0, 32));
  for (let i = 0; i < 8; i++) {
    for (let j = 0; j < 8; j++) cov[i * 8 + j] -= X[i] * HP[j] + X[8 + i] * HP[8 + j] + X[16 + i] * HP[16 + j] + X[24 + i] * HP[24 + j];
  }
}
