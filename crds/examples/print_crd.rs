fn main() {
    print!("{}", streamjob_crds::crd_yaml());
}
