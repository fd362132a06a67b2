//! The CPU a Redis server has used, for the benchmarks that print CPU per event.

use redis::aio::ConnectionLike;

/// CPU seconds the Redis server behind `conn` has used (`INFO cpu`: `used_cpu_sys` +
/// `used_cpu_user`).
pub(crate) async fn redis_cpu(conn: &mut impl ConnectionLike) -> redis::RedisResult<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    Ok(info
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_sys" || *k == "used_cpu_user")
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum())
}
