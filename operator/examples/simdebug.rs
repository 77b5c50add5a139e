use streamjob_operator::autoscaler::policy::PartitionSample;
use streamjob_operator::autoscaler::simulator::*;
struct Trace2<'a>(Ours, &'a mut Vec<String>);
impl Scaler for Trace2<'_> {
    fn name(&self) -> &'static str {
        "x"
    }
    fn poll(&mut self, t: f64, p: &[PartitionSample], c: i32, s: bool) -> i32 {
        let r = self.0.poll(t, p, c, s);
        if t % 10.0 == 0.0 {
            let lag: i64 = p.iter().map(|x| x.high - x.committed.unwrap()).sum();
            self.1.push(format!("t={t} cur={c} settled={s} lag={lag} -> {r}"));
        }
        r
    }
}
fn main() {
    let model = Model::default();
    let trace = &traces()[0];
    let mut log = Vec::new();
    let mut s = Trace2(Ours::new(&model), &mut log);
    let o = simulate(&model, trace, &mut s);
    for l in log.iter().take(45) {
        println!("{l}");
    }
    println!("{o:?}");
}
